"""inplace=True: the same result as the copying run, float layers released one by one, and a
failure midway that names what was already converted."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from mono_quant import dynamic_quantize, static_quantize
from mono_quant.errors import PartialConversionError
from mono_quant.nn import QuantizedLinear
from mono_quant.schemes.int4 import Int4Scheme
from mono_quant.schemes.int8 import Int8Scheme

from helpers import make_cnn


def stack(n: int = 4, width: int = 128) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(n)])


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_in_place_gives_what_the_copy_gives(dtype):
    model = stack()
    x = torch.randn(3, 128)
    copied, info_copy = dynamic_quantize(model, dtype)
    result, info = dynamic_quantize(model, dtype, inplace=True)
    assert result is model
    assert torch.equal(result(x), copied(x)) and result(x).dtype == torch.float32
    assert [(l.name, l.scheme, l.sqnr_db) for l in info.layers.values()] == \
        [(l.name, l.scheme, l.sqnr_db) for l in info_copy.layers.values()]


def test_in_place_cnn_matches_copy_and_report_explains_skipped_checks():
    model = make_cnn().eval()
    x = torch.randn(2, 3, 8, 8)
    copied, _ = dynamic_quantize(model, "int8", min_params=0)
    result, info = dynamic_quantize(model, "int8", min_params=0, inplace=True)
    assert torch.equal(result(x), copied(x))
    checks = info.validation.checks
    assert checks["sqnr"].status == "passed" and checks["range"].status == "passed"
    assert checks["size"].status == "skipped" and "in place" in checks["load"].message


def test_each_float_weight_is_released_before_the_next_layer_is_converted(monkeypatch):
    model = stack(5)
    weights = [weakref.ref(layer.weight) for layer in model]
    alive_at_each_call = []
    original = Int8Scheme.convert_module

    def spy(self, name, module):
        gc.collect()
        alive_at_each_call.append([ref() is not None for ref in weights])
        return original(self, name, module)

    monkeypatch.setattr(Int8Scheme, "convert_module", spy)
    dynamic_quantize(model, "int8", inplace=True, validate=False)
    for i, alive in enumerate(alive_at_each_call):
        assert alive == [False] * i + [True] * (5 - i), (i, alive)
    gc.collect()
    assert all(ref() is None for ref in weights)


def test_a_failure_midway_names_the_converted_layers(monkeypatch):
    model = stack(4)
    original = Int4Scheme.convert_module

    def fail_on_third(self, name, module):
        if name == "2":
            raise RuntimeError("disk on fire")
        return original(self, name, module)

    monkeypatch.setattr(Int4Scheme, "convert_module", fail_on_third)
    with pytest.raises(PartialConversionError, match=r"failed at layer '2' \(RuntimeError: disk on fire\); 2 layer\(s\) "
                                                      r"were already converted \('0', '1'\).*discard it") as caught:
        dynamic_quantize(model, "int4", inplace=True)
    assert caught.value.converted == ["0", "1"] and caught.value.layer == "2"
    assert isinstance(caught.value.__cause__, RuntimeError)
    # without inplace the caller's model is untouched and the error is the original one
    with pytest.raises(RuntimeError, match="disk on fire"):
        dynamic_quantize(stack(4), "int4")


def test_state_dict_in_place_refills_the_same_dict():
    state = stack(3).state_dict()
    copied, _ = dynamic_quantize(dict(state), "int8", validate=False)
    weight = weakref.ref(state["1.weight"])
    result, info = dynamic_quantize(state, "int8", inplace=True)
    assert result is state and list(result) == list(copied)
    assert all(torch.equal(result[k], copied[k]) for k in copied)
    gc.collect()
    assert weight() is None
    assert info.validation.checks["range"].status == "passed"


def test_in_place_needs_a_bool_and_a_mutable_state_dict():
    with pytest.raises(TypeError, match="inplace must be True or False"):
        dynamic_quantize(stack(), inplace="yes")
    from types import MappingProxyType
    with pytest.raises(TypeError, match="needs a mutable state_dict"):
        dynamic_quantize(MappingProxyType(stack().state_dict()), inplace=True)


@pytest.mark.parametrize("compute_sqnr", [True, False])
def test_static_in_place_gives_what_the_copy_gives(compute_sqnr):
    model = stack(3).eval()
    data = torch.randn(64, 128)
    x = torch.randn(4, 128)
    copied, info_copy = static_quantize(model, data, num_samples=32, compute_sqnr=compute_sqnr, progress=False)
    result, info = static_quantize(model, data, num_samples=32, compute_sqnr=compute_sqnr, progress=False,
                                   inplace=True)
    assert result is model and not isinstance(model[0], nn.Linear)
    assert torch.equal(result(x), copied(x))
    assert list(info.layers) == list(info_copy.layers)
    assert [l.sqnr_db for l in info.layers.values()] == [l.sqnr_db for l in info_copy.layers.values()]


def test_in_place_keeps_shared_modules_shared():
    shared = nn.Linear(128, 128)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    result, _ = dynamic_quantize(model, inplace=True)
    assert isinstance(result[0], QuantizedLinear) and result[0] is result[2]
