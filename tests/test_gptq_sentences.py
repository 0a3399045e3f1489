"""The sentences of benchmarks/bench_gptq.py: the evaluation set stays varied and the
calibration set never contains an evaluation input (not even with other case or punctuation)."""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

from gptq_sentences import CALIBRATION_SENTENCES, EVAL_SENTENCES  # noqa: E402


def _normal(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def test_evaluation_set_is_varied():
    assert len(EVAL_SENTENCES) >= 64
    assert len(set(EVAL_SENTENCES)) == len(EVAL_SENTENCES)
    words = [s for s in EVAL_SENTENCES if len(s.split()) == 1]
    assert len(words) >= 5  # one-word inputs
    assert any("def " in s or "{" in s for s in EVAL_SENTENCES)  # code
    assert any("ü" in s or "é" in s for s in EVAL_SENTENCES)  # other languages
    assert any(len(s.split()) >= 30 for s in EVAL_SENTENCES)  # long inputs


def test_calibration_set_is_disjoint_from_evaluation_set():
    assert len(set(CALIBRATION_SENTENCES)) == len(CALIBRATION_SENTENCES)
    evaluation = {_normal(s) for s in EVAL_SENTENCES}
    assert [s for s in CALIBRATION_SENTENCES if _normal(s) in evaluation] == []
