"""The hook that tells a model's library about its quantization, without importing the library."""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

from mono_quant import dynamic_quantize
from mono_quant._integrations import is_transformers_model


def _fake_pretrained_class():
    base = type("PreTrainedModel", (nn.Module,), {"__module__": "transformers.modeling_utils"})
    return type("TinyModel", (base,), {"__module__": "some_models"})


def test_transformers_models_are_recognised_by_class_alone():
    assert not is_transformers_model(nn.Linear(2, 2))
    assert is_transformers_model(_fake_pretrained_class()())


def test_without_a_usable_transformers_the_run_still_succeeds_with_a_warning(monkeypatch):
    cls = _fake_pretrained_class()

    class Model(cls):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)

    monkeypatch.setitem(sys.modules, "mono_quant.integrations.transformers", None)  # import fails
    q_model, info = dynamic_quantize(Model(), validate=False)
    assert any("save_pretrained cannot record this quantization" in w for w in info.warnings)
    assert q_model.fc(torch.randn(1, 64)).shape == (1, 64)


def test_other_models_are_left_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", types.ModuleType("transformers"))
    q_model, info = dynamic_quantize(nn.Sequential(nn.Linear(64, 64)), validate=False)
    assert not hasattr(q_model, "hf_quantizer") and not info.warnings


def test_the_core_never_imports_transformers():
    import subprocess
    from pathlib import Path

    code = ("import sys, torch, mono_quant; "
            "mono_quant.dynamic_quantize(torch.nn.Sequential(torch.nn.Linear(64, 64))); "
            "mono_quant.quantize_checkpoint; import mono_quant.sharded, mono_quant.cli; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
