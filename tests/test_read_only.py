"""Every public call that only reads a model (validate, calibrate, inspect, the reports), and the
calls that return a new model, leave the models passed in exactly as they were: parameters and
buffers (same objects, same bits, dtype, device, version counter), requires_grad and grads,
training flags, hooks, plain attributes. The models are built to be easy to disturb: BatchNorm
and Dropout in training mode, buffers and an attribute every forward updates, hooks."""

from __future__ import annotations

import contextlib
import os
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mono_quant import (
    ValidationError,
    calibrate,
    dynamic_quantize,
    gptq_quantize,
    save_quantized,
    static_quantize,
    validate,
)
from mono_quant.cli import inspect_text, main
from mono_quant.validate import validate_file

from helpers import assert_same_snapshot, snapshot

ROWS = 6


class Busy(nn.Module):
    """A convolution, BatchNorm, Dropout and two Linear layers. Every forward, in any mode,
    counts itself in a buffer, records a channel mean in a non-persistent buffer and sets an
    attribute; fc2 is frozen and in eval mode while the rest trains; fc1.bias has a gradient;
    conv, fc1 and fc2 carry hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.25)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("channel_mean", torch.zeros(8), persistent=False)
        self.last_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last_rows = x.shape[0]
        h = self.bn(self.conv(x))
        self.channel_mean.copy_(h.detach().mean((0, 2, 3)))
        h = self.drop(torch.relu(h)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _pre_hook(module, args):
    return None


def _kwargs_pre_hook(module, args, kwargs):
    return None


def _hook(module, args, output):
    return output


def make_busy() -> Busy:
    torch.manual_seed(1)
    model = Busy().train()
    model.fc2.eval()
    model.fc2.weight.requires_grad_(False)
    model.fc1.bias.grad = torch.ones_like(model.fc1.bias)
    model.conv.register_forward_pre_hook(_kwargs_pre_hook, with_kwargs=True)
    model.fc1.register_forward_pre_hook(_pre_hook)
    model.fc2.register_forward_hook(_hook)
    return model


def inputs(rows: int = ROWS) -> torch.Tensor:
    return torch.randn(rows, 3, 4, 4, generator=torch.Generator().manual_seed(rows))


def quantized(kind: str, model: nn.Module, **options) -> nn.Module:
    """A quantized model that keeps Busy's BatchNorm, buffers, attribute, flags and hooks."""
    if kind == "static":
        qmodel, _ = static_quantize(model, inputs(40), min_params=0, num_samples=32, progress=False, **options)
    else:
        options.update({"group_size": 32} if kind == "int4" else {})
        qmodel, _ = dynamic_quantize(model, kind, min_params=0, validate=False, **options)
    assert any(type(m).__module__.startswith("mono_quant.nn") for m in qmodel.modules())
    return qmodel


@contextlib.contextmanager
def left_alone(*objects, same_random_state: bool = False):
    """Asserts that every model (or state_dict) in ``objects`` is as it was when the block
    began, also when the block raised; with ``same_random_state``, also the global random
    generator (validate seeds its runs and puts the generator back; calibrate draws what
    the caller's data and model draw, a DataLoader its seed)."""
    before = [snapshot(o) for o in objects]
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        for b, o in zip(before, objects):
            assert_same_snapshot(b, snapshot(o))
        assert not same_random_state or torch.equal(torch.get_rng_state(), rng), "the global generator moved"


KINDS = ["int8", "int4", "static"]


# ---- validate -----------------------------------------------------------------------------------

SAMPLES = {
    "no sample input": lambda: None,
    "a tensor": inputs,
    "a tuple": lambda: (inputs(),),
    "keyword arguments": lambda: {"x": inputs()},
}


@pytest.mark.parametrize("sample", list(SAMPLES))
@pytest.mark.parametrize("kind", KINDS)
def test_validate(kind, sample):
    model = make_busy()
    qmodel = quantized(kind, model)
    x = SAMPLES[sample]()
    with left_alone(model, qmodel, same_random_state=True):
        report = validate(model, qmodel, x)
        assert report.passed, report
        if x is not None:
            assert report.checks["load"].message == "outputs on the sample input are identical after save + load"
        for checks in (["load"], ["sqnr", "range"], ["size"]):
            assert validate(model, qmodel, x, checks=checks).passed
        report = validate(model, qmodel, x, min_sqnr_db=500.0)
        assert not report.passed
        with pytest.raises(ValidationError):
            report.raise_if_failed()
        assert "sqnr check failed" in report.summary() and report.failures and "FAILED" in str(report)
        assert repr(report).startswith("ValidationReport(")


@pytest.mark.parametrize("kind", KINDS)
def test_validate_that_raises_midway(kind):
    model = make_busy()
    qmodel = quantized(kind, model)
    wrong = torch.randn(2, 3, 5, 5)  # BatchNorm runs, then fc1 gets the wrong width
    with left_alone(model, qmodel, same_random_state=True), pytest.raises((ValueError, RuntimeError)):
        validate(model, qmodel, wrong)


def test_validate_state_dicts():
    model = make_busy()
    state = model.state_dict()
    qstate, info = dynamic_quantize(state, "int8", min_params=0, validate=False)
    with left_alone(model, state, qstate, same_random_state=True):
        assert validate(state, qstate, info=info).passed
        assert not validate(state, qstate, min_sqnr_db=500.0).passed


# ---- calibrate ----------------------------------------------------------------------------------

def calib_forms() -> dict:
    x = inputs(24)
    labels = torch.zeros(24, dtype=torch.long)
    return {
        "one tensor": x,
        "list of tensors": list(x.split(8)),
        "(input, target) tuples": list(zip(x.split(8), labels.split(8))),
        "one dict": {"x": x},
        "dicts": [{"x": b} for b in x.split(8)],
        "DataLoader": DataLoader(TensorDataset(x, labels), batch_size=8),
        "generator": (b for b in x.split(8)),
    }


@pytest.mark.parametrize("form", list(calib_forms()))
@pytest.mark.parametrize("kind", ["float", "int8"])
def test_calibrate(kind, form):
    model = make_busy()
    target = model if kind == "float" else quantized(kind, model, modules_to_not_convert=["fc2"])
    data = calib_forms()[form]
    with left_alone(model, target):
        stats = calibrate(target, data, min_params=0, num_samples=16, progress=False)
        assert stats.num_samples == 16 and stats.layers
        assert "Observer 'minmax': 16 samples" in str(stats) and repr(stats).startswith("CalibrationStats(")
        assert all(r.range[0] <= r.range[1] and not r.clipped for r in stats.layers.values())


def test_calibrate_that_fails_midway():
    def data():
        yield inputs(4)
        raise OSError("disk gone")

    model = make_busy()
    with left_alone(model), pytest.raises(OSError, match="disk gone"):
        calibrate(model, data(), min_params=0, progress=False)
    with left_alone(model), pytest.raises(RuntimeError):  # the second batch fails after BatchNorm ran
        calibrate(model, [inputs(4), torch.randn(2, 3, 5, 5)], min_params=0, progress=False)


def test_gptq_that_fails_midway():
    def data():
        yield inputs(4)
        raise OSError("disk gone")

    model = make_busy()
    with left_alone(model), pytest.raises(OSError, match="disk gone"):
        gptq_quantize(model, data(), min_params=0, group_size=32, progress=False)
    with left_alone(model), pytest.raises(RuntimeError):  # the second batch fails after BatchNorm ran
        gptq_quantize(model, [inputs(4), torch.randn(2, 3, 5, 5)], min_params=0, group_size=32, progress=False)


# ---- the calls that return a new model ---------------------------------------------------------

def test_quantizing_and_saving():
    model = make_busy()
    with left_alone(model):
        stats = calibrate(model, inputs(40), min_params=0, num_samples=32, progress=False)
        qmodel, info = static_quantize(model, stats, min_params=0)
        static_quantize(model, inputs(40), min_params=0, num_samples=32, progress=False)
        for dtype in ("int8", "int4", "fp16"):
            dynamic_quantize(model, dtype, min_params=0)
        gptq_quantize(model, inputs(40), min_params=0, group_size=32, num_samples=32, progress=False)
        gptq_quantize(model, [{"x": b} for b in inputs(40).split(8)], min_params=0, group_size=32,
                      num_samples=32, sequential=True, max_bits_per_weight=6.0, progress=False)
    with left_alone(model, qmodel):
        save_quantized(qmodel, "model.pt", info)


class Tiny(nn.Module):
    """Quantizing its one Linear(1, 64) makes it larger, so the end-of-run size check fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 64)
        self.bn = nn.BatchNorm1d(64)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.fc.register_forward_hook(_hook)

    def forward(self, x):
        self.calls += 1
        return self.bn(self.fc(x))


@pytest.mark.parametrize("on_failure", ["warn", "error", "ignore"])
def test_dynamic_quantize_whose_validation_fails(on_failure):
    model = Tiny().train()
    with left_alone(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if on_failure == "error":
            with pytest.raises(ValidationError, match="size check failed"):
                dynamic_quantize(model, min_params=0, on_failure=on_failure)
        else:
            _, info = dynamic_quantize(model, min_params=0, on_failure=on_failure)
            assert not info.validation.passed


# ---- inspect, validate a file, the reports --------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_inspect_and_the_reports(suffix, capsys):
    model = make_busy()
    qmodel, info = dynamic_quantize(model, "int8", min_params=0)
    path = "model" + suffix
    save_quantized(qmodel, path, info)
    data, stamp = open(path, "rb").read(), os.stat(path).st_mtime_ns
    with left_alone(model, qmodel):
        assert "mono_quant format" in inspect_text(path)
        assert main(["inspect", path]) == 0
        assert main(["validate", path]) == 0
        assert validate_file(path).passed
        assert "Total:" in str(info) and repr(info).startswith("QuantizationInfo(")
        assert info.quantized and info.fallbacks == {} and info.compression_ratio > 1
        assert str(info.validation).endswith("Validation passed") and info.validation.summary().startswith("all")
        for layer in info.layers.values():
            assert repr(layer).startswith("LayerInfo(") and layer.accuracy in ("good", "fair", None)
    assert open(path, "rb").read() == data and os.stat(path).st_mtime_ns == stamp
    capsys.readouterr()


# ---- the snapshot itself sees every kind of change ------------------------------------------------

CHANGES = {
    "a forward (BatchNorm statistics, the buffers, the attribute)": lambda m: m(inputs()),
    "an in-place write of the same values": lambda m: m.fc1.weight.copy_(m.fc1.weight.clone()),
    "other values written through .data": lambda m: m.fc1.weight.data.mul_(2),
    "a parameter replaced by an equal one": lambda m: setattr(m.fc1, "weight", nn.Parameter(m.fc1.weight.detach().clone())),
    "a buffer moved to another dtype": lambda m: m.bn.to(torch.float64),
    "requires_grad switched": lambda m: m.fc1.weight.requires_grad_(False),
    "a gradient zeroed": lambda m: m.fc1.bias.grad.zero_(),
    "a gradient dropped": lambda m: setattr(m.fc1.bias, "grad", None),
    "one training flag": lambda m: m.fc2.train(),
    "a hook removed": lambda m: m.fc2._forward_hooks.clear(),
    "a hook added": lambda m: m.bn.register_forward_pre_hook(_pre_hook),
    "an attribute set": lambda m: setattr(m.bn, "note", 1),
    "a buffer made persistent": lambda m: m._non_persistent_buffers_set.clear(),
    "a submodule swapped for a copy": lambda m: setattr(m, "drop", nn.Dropout(0.25)),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_snapshot_sees_every_kind_of_change(change):
    model = make_busy()
    before = snapshot(model)
    with torch.no_grad():
        CHANGES[change](model)
    with pytest.raises(AssertionError, match="the model changed"):
        assert_same_snapshot(before, snapshot(model))


def test_the_snapshot_sees_global_hooks_and_state_dict_changes():
    model = make_busy()
    state = model.state_dict()
    before = snapshot(model), snapshot(state)
    handle = nn.modules.module.register_module_forward_hook(_hook)
    try:
        with pytest.raises(AssertionError, match="global module hooks changed"):
            assert_same_snapshot(before[0], snapshot(model))
    finally:
        handle.remove()
    state["fc1.bias"].add_(0)
    with pytest.raises(AssertionError, match="fc1.bias: version"):
        assert_same_snapshot(before[1], snapshot(state))
