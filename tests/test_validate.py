"""validate, validate_file and the end-of-dynamic_quantize checks with their on_failure modes."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn

from mono_quant import ValidationError, ValidationReport, dynamic_quantize, register_scheme, save_quantized, validate
from mono_quant.schemes import Int8Scheme, registry
from mono_quant.validate import CHECKS, meta_skeleton, validate_file

from helpers import SharedLog, assert_same_snapshot, make_cnn, make_mlp, poke_packed, snapshot
from io_helpers import TiedLM


def test_a_good_model_passes_every_check(backend):
    model = make_mlp().eval()
    qmodel, info = dynamic_quantize(model, validate=False)
    before = snapshot(model), snapshot(qmodel)
    report = validate(model, qmodel, torch.randn(4, 64))
    assert isinstance(report, ValidationReport) and report.passed and list(report.checks) == list(CHECKS)
    assert all(c.status == "passed" for c in report.checks.values())
    assert report.checks["load"].message == "outputs on the sample input are identical after save + load"
    assert report.layer_sqnr.keys() == {"0", "3"} and min(report.layer_sqnr.values()) > 30
    assert report.layer_sqnr["0"] == pytest.approx(info.layers["0"].sqnr_db)  # measured again, same number
    assert report.bytes_after < report.bytes_before
    text = str(report)
    assert text.splitlines()[0].startswith("sqnr   PASSED") and text.endswith("Validation passed")
    assert report.summary() == "all checks passed (sqnr, size, load, range)"
    assert_same_snapshot(before[0], snapshot(model))
    assert_same_snapshot(before[1], snapshot(qmodel))


def test_without_a_sample_input_the_state_is_compared():
    model = make_cnn()
    qmodel, _ = dynamic_quantize(model, min_params=0, validate=False)
    report = validate(model, qmodel)
    assert report.passed and report.checks["load"].message.startswith("the state after save + load")


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_state_dicts_and_other_models(dtype):
    model = TiedLM()
    qsd, info = dynamic_quantize(model.state_dict(), dtype, validate=False)
    assert validate(model.state_dict(), qsd, info=info).passed
    qmodel, info = dynamic_quantize(model.train(), dtype, validate=False)
    nn.init.zeros_(model.fc1.bias)
    report = validate(model, qmodel, torch.randint(0, 50, (2, 8)))  # training mode, tied weights
    assert report.passed, report


def test_dropout_in_training_mode_compares_equal():
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5), nn.Linear(64, 8)).train()
    qmodel, _ = dynamic_quantize(model, validate=False)
    assert validate(model, qmodel, (torch.randn(4, 64),)).passed


def test_failures_name_the_problem():
    model = make_mlp()
    qmodel, _ = dynamic_quantize(model, validate=False)
    report = validate(model, qmodel, min_sqnr_db=100.0)
    assert not report.passed and [c.name for c in report.failures] == ["sqnr"]
    assert report.checks["sqnr"].message.startswith("2 layer(s) below 100 dB: ")
    poke_packed(qmodel[0], "scale", (3,), -1.0)
    poke_packed(qmodel[3], "zero_point", (0,), 999)
    report = validate(model, qmodel)
    assert report.checks["range"].message == (
        "0: scale has 1 value(s) <= 0 (min -1); 3: zero_point has values in [0, 999], outside [-128, 127]")
    with pytest.raises(ValidationError, match="range check failed") as caught:
        report.raise_if_failed()
    assert caught.value.report is report
    half, _ = dynamic_quantize(model, "fp16", validate=False)
    report = validate(half, model)  # "quantizing" float16 to float32 grows the model
    assert report.checks["size"].status == "failed" and "larger" in report.checks["size"].message


def test_load_check_catches_a_model_that_cannot_round_trip():
    class Extra(nn.Linear):
        def get_extra_state(self):
            return {"step": 3}

        def set_extra_state(self, state):
            pass

    model = nn.Sequential(Extra(64, 64))
    qmodel, _ = dynamic_quantize(model, validate=False)
    report = validate(model, qmodel)
    assert report.checks["load"].status == "failed"
    assert "only tensors can be saved" in report.checks["load"].message


def test_load_check_against_a_different_architecture():
    qmodel, _ = dynamic_quantize(make_mlp(), validate=False)
    report = validate(make_cnn(), qmodel)
    assert report.checks["load"].status == "failed" and "CorruptFileError" in report.checks["load"].message


def test_check_selection_and_arguments():
    model = make_mlp()
    qmodel, _ = dynamic_quantize(model, validate=False)
    assert list(validate(model, qmodel, checks=["range", "size"]).checks) == ["size", "range"]
    with pytest.raises(ValueError, match="unknown check\\(s\\) 'speed'; choose from sqnr, size, load, range"):
        validate(model, qmodel, checks=["speed"])
    with pytest.raises(TypeError, match="both be nn.Modules or both be state_dicts"):
        validate(model, qmodel.state_dict())
    report = validate(model, model)
    assert report.checks["sqnr"].status == report.checks["range"].status == "skipped"


def test_meta_skeleton_allocates_nothing_for_saved_tensors():
    model = make_mlp()
    model.register_buffer("cache", torch.ones(3), persistent=False)
    skeleton = meta_skeleton(model)
    assert all(p.is_meta for p in skeleton.parameters()) and not skeleton.cache.is_meta
    assert not any(p.is_meta for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The models passed in are left as they were (tests/test_read_only.py runs every entry point).
# ---------------------------------------------------------------------------------------------


class CountingBN(nn.Module):
    """BatchNorm (its running statistics change in training mode), a buffer every forward
    updates in any mode, and a way to fail after both have run."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, 32)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x, fail=False):
        self.calls += 1
        y = self.fc(self.bn(x))
        if fail:
            raise RuntimeError("boom after the BatchNorm")
        return y


def test_validate_runs_no_forward_on_the_models_passed_in(backend):
    model = CountingBN().train()
    qmodel, _ = dynamic_quantize(model, validate=False)
    before = snapshot(model), snapshot(qmodel)
    report = validate(model, qmodel, torch.randn(8, 64))
    assert report.passed, report
    assert int(qmodel.bn.num_batches_tracked) == 0 and int(qmodel.calls) == 0 and qmodel.training
    assert_same_snapshot(before[0], snapshot(model))
    assert_same_snapshot(before[1], snapshot(qmodel))


def test_models_are_left_as_they_were_when_validation_raises():
    model = CountingBN().train()
    qmodel, _ = dynamic_quantize(model, validate=False)
    before = snapshot(model), snapshot(qmodel)
    with pytest.raises(RuntimeError, match="boom after the BatchNorm"):
        validate(model, qmodel, {"x": torch.randn(8, 64), "fail": True})
    assert_same_snapshot(before[0], snapshot(model))
    assert_same_snapshot(before[1], snapshot(qmodel))


def test_outputs_are_compared_in_eval_mode_without_grad():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = SharedLog()

        def forward(self, x):
            self.seen.append((self.training, torch.is_grad_enabled()))
            return x

    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5), Probe()).train()
    qmodel, _ = dynamic_quantize(model, validate=False)
    assert validate(model, qmodel, torch.randn(4, 64)).passed
    assert qmodel[2].seen == [(False, False), (False, False)]  # the quantized copy, then the reloaded model
    assert all(m.training for m in qmodel.modules())


def test_a_forward_that_writes_to_its_input():
    class AddsOne(nn.Module):
        def forward(self, x):
            return x.add_(1)

    model = nn.Sequential(AddsOne(), nn.Linear(64, 8))
    qmodel, _ = dynamic_quantize(model, validate=False)
    x = torch.randn(2, 64)
    kept = x.clone()
    report = validate(model, qmodel, (x,))
    assert report.passed, report  # both runs start from the same input
    assert torch.equal(x, kept)


def test_a_model_that_cannot_be_copied_is_only_run_on_request():
    model = make_mlp()
    qmodel, _ = dynamic_quantize(model, validate=False)
    qmodel.source = (i for i in range(3))  # a generator cannot be copied
    assert validate(model, qmodel).passed
    with pytest.raises(TypeError, match="validate works on a deep copy .* or leave sample_input out"):
        validate(model, qmodel, torch.randn(2, 64))


def test_validate_seeds_no_cuda_generator_for_a_cpu_model(monkeypatch):
    # torch.manual_seed would also (lazily) reseed every CUDA generator and never put it back
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5)).train()
    qmodel, _ = dynamic_quantize(model, validate=False)
    x = torch.randn(4, 64)
    state = torch.get_rng_state()
    assert validate(model, qmodel, x).passed
    assert seeded == [] and torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_validate_leaves_the_cuda_generator_as_it_was():
    model = make_mlp().cuda().eval()
    qmodel, _ = dynamic_quantize(model, validate=False)
    x = torch.randn(2, 64, device="cuda")
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    assert validate(model, qmodel, x).passed
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), cuda)


# ---------------------------------------------------------------------------------------------
# At the end of dynamic_quantize.
# ---------------------------------------------------------------------------------------------


class _BrokenScheme(Int8Scheme):
    """INT8, with a negative scale slipped into every layer: the range check must catch it."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, dtype="int8"))

    def convert_module(self, name, module):
        quantized, record = super().convert_module(name, module)
        poke_packed(quantized, "scale", (0,), -float(quantized.scale[0]))
        return quantized, record


@pytest.fixture
def broken(monkeypatch):
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    register_scheme("broken", _BrokenScheme)
    return "broken"


def test_dynamic_quantize_validates_by_default():
    qmodel, info = dynamic_quantize(make_mlp())
    assert info.validation.passed and list(info.validation.checks) == list(CHECKS)
    _, info = dynamic_quantize(make_mlp(), validate=False)
    assert info.validation is None
    _, info = dynamic_quantize(make_mlp(), compute_sqnr=False)
    assert "sqnr" not in info.validation.checks and info.validation.passed


def test_on_failure_warn_is_the_default(broken):
    with pytest.warns(RuntimeWarning, match="validation failed: .*range check failed: 0: scale has 1 value"):
        qmodel, info = dynamic_quantize(make_mlp(), broken)
    assert not info.validation.passed and "range check failed: 0: scale has 1 value" in info.warnings[-1]
    # A scale <= 0 cannot be saved either (a file holding it would not load).
    assert "cannot save: layer '0' (int8_linear): tensor '0.scale'" in info.validation.checks["load"].message
    assert isinstance(qmodel, nn.Module)


def test_on_failure_error_raises(broken):
    with pytest.raises(ValidationError, match="range check failed.*pass on_failure='warn'") as caught:
        dynamic_quantize(make_mlp(), broken, on_failure="error")
    assert not caught.value.report.passed


def test_on_failure_ignore_is_silent(broken):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = dynamic_quantize(make_mlp(), broken, on_failure="ignore")
    assert not info.validation.passed and not any("validation" in w for w in info.warnings)


def test_config_checks_the_new_options():
    with pytest.raises(ValueError, match="on_failure must be one of 'error', 'warn', 'ignore'; got 'panic'"):
        dynamic_quantize(make_mlp(), on_failure="panic")
    with pytest.raises(ValueError, match="validate must be True or False"):
        dynamic_quantize(make_mlp(), validate="yes")


# ---------------------------------------------------------------------------------------------
# From files alone.
# ---------------------------------------------------------------------------------------------


def test_validate_file_with_and_without_the_original():
    from safetensors.torch import save_file

    from mono_quant import quantize_checkpoint

    model = make_cnn()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "cnn.safetensors")
    info = quantize_checkpoint("cnn.safetensors", "q.safetensors", "int8", min_params=0)
    alone = validate_file("q.safetensors")
    assert alone.passed and alone.layer_sqnr == {n: r.sqnr_db for n, r in info.layers.items() if r.quantized}
    against = validate_file("q.safetensors", "cnn.safetensors")
    assert against.passed and against.layer_sqnr == pytest.approx(alone.layer_sqnr)
    assert against.bytes_before == alone.bytes_before == info.total_bytes_before
    assert validate_file("q.safetensors", min_sqnr_db=60).checks["sqnr"].status == "failed"


def test_validate_file_reports_a_damaged_file():
    qmodel, info = dynamic_quantize(make_mlp())
    save_quantized(qmodel, "m.safetensors", info)
    data = bytearray(open("m.safetensors", "rb").read())
    data[-2] ^= 1
    open("m.safetensors", "wb").write(bytes(data))
    report = validate_file("m.safetensors")
    assert report.checks["load"].status == "failed" and "CRC-32" in report.checks["load"].message
    assert [c.status for c in report.checks.values()] == ["skipped", "skipped", "failed", "skipped"]


def test_validate_file_without_recorded_sqnr_or_dtypes():
    qmodel, _ = dynamic_quantize(make_mlp())
    save_quantized(qmodel, "bare.pt")
    report = validate_file("bare.pt")
    assert report.passed
    assert report.checks["sqnr"].status == "skipped" and "pass the original" in report.checks["sqnr"].message
    assert report.checks["size"].status == "skipped"


def test_int4_models_are_checked():
    from io_helpers import int4_quantize_linears

    model = make_mlp()
    qmodel = int4_quantize_linears(copy.deepcopy(model), group_size=32)  # symmetric: zero points are 8
    report = validate(model, qmodel, torch.randn(2, 64))
    assert report.passed, report
    assert 15 < min(report.layer_sqnr.values()) < 30  # int4 territory
    poke_packed(qmodel[0], "zero_point", (0, 0), 20)
    assert validate(model, qmodel).checks["range"].message == "0: zero_point has values in [8, 20], outside [0, 15]"
