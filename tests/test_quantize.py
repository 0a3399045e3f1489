"""dynamic_quantize: accuracy, the caller's model untouched, state_dict mode, arguments."""

from __future__ import annotations

import collections
import re

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import LayerInfo, QuantizationConfig, dequantize_state_dict, dynamic_quantize, register_scheme
from mono_quant.nn import QuantizedConv2d, QuantizedLinear
from mono_quant.schemes import Int8Scheme, Scheme, get_scheme, registry

from helpers import assert_same_snapshot, cosine, make_cnn, make_mlp, snapshot

OPTIONS = [
    {"symmetric": True, "per_channel": True},
    {"symmetric": False, "per_channel": True},
    {"symmetric": True, "per_channel": False},
    {"symmetric": False, "per_channel": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"sym={o['symmetric']}-pc={o['per_channel']}")
def test_int8_mlp_matches_fp32(backend, options):
    model = make_mlp().eval()
    qmodel, info = dynamic_quantize(model, "int8", **options)
    assert isinstance(qmodel[0], QuantizedLinear) and isinstance(qmodel[3], QuantizedLinear)
    assert qmodel[0].qweight.dtype == (torch.int8 if options["symmetric"] else torch.uint8)
    x = torch.randn(16, 64)
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.999
    assert all(layer.sqnr_db > 30 for layer in info.layers.values() if layer.quantized)


def test_int8_cnn_matches_fp32(backend):
    model = make_cnn().eval()
    qmodel, info = dynamic_quantize(model, min_params=0)
    assert [type(m) for m in qmodel if isinstance(m, (QuantizedConv2d, QuantizedLinear))] == [
        QuantizedConv2d, QuantizedConv2d, QuantizedLinear
    ]
    assert info.skipped.keys() == {"1"}  # the BatchNorm
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.999


def test_weights_are_the_kernel_results(backend):
    from mono_quant import _kernels as K

    model = make_mlp()
    qmodel, _ = dynamic_quantize(model)
    w = model[0].weight.detach()
    scale, zp = K.qparams(*K.minmax(w, axis=0), torch.int8, symmetric=True)
    assert torch.equal(qmodel[0].qweight, K.quantize(w, scale, zp, axis=0))
    assert torch.equal(qmodel[0].scale, scale) and torch.equal(qmodel[0].zero_point, zp)


def test_sizes_are_counted_right():
    model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.Linear(128, 32, bias=False))
    _, info = dynamic_quantize(model)
    fc1, norm, fc2 = (info.layers[n] for n in ("0", "1", "2"))
    assert fc1.bytes_before == (64 * 128 + 128) * 4
    assert fc1.bytes_after == 64 * 128 + 128 * 4 * 3  # qweight + scale + zero_point + bias
    assert fc2.bytes_before == 128 * 32 * 4 and fc2.bytes_after == 128 * 32 + 32 * 4 * 2
    assert norm.bytes_before == norm.bytes_after == 2 * 128 * 4
    assert info.total_bytes_before == sum(p.numel() * 4 for p in model.parameters())
    assert info.total_bytes_after == fc1.bytes_after + norm.bytes_after + fc2.bytes_after
    assert info.compression_ratio == pytest.approx(info.total_bytes_before / info.total_bytes_after)
    assert (fc1.shape, fc1.dtype, fc1.scheme) == ((128, 64), "int8", "int8 per-channel symmetric")


def test_original_model_is_untouched():
    model = make_cnn()
    before = snapshot(model)
    qmodel, _ = dynamic_quantize(model, min_params=0)
    assert qmodel is not model
    assert_same_snapshot(before, snapshot(model))
    assert not any(p is q for p in model.parameters() for q in qmodel.parameters())


def test_failure_midway_leaves_the_model_untouched(monkeypatch):
    model = make_mlp()
    before = snapshot(model)
    calls = []
    real = Int8Scheme.convert_module

    def failing(self, name, module):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(self, name, module)

    monkeypatch.setattr(Int8Scheme, "convert_module", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        dynamic_quantize(model)
    assert calls == ["0", "3"]
    assert_same_snapshot(before, snapshot(model))
    assert all(type(m) is not QuantizedLinear for m in model.modules())


def test_training_flag_and_device_are_kept():
    model = make_mlp().train()
    model[2].eval()
    qmodel, _ = dynamic_quantize(model)
    assert qmodel.training and qmodel[0].training and not qmodel[2].training
    qmodel, _ = dynamic_quantize(model.eval())
    assert not any(m.training for m in qmodel.modules())
    assert {t.device.type for t in qmodel.state_dict().values()} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_stays_on_cuda():
    model = make_cnn().cuda().eval()
    qmodel, _ = dynamic_quantize(model, min_params=0)
    assert {t.device.type for t in qmodel.state_dict().values()} == {"cuda"}
    x = torch.randn(2, 3, 8, 8, device="cuda")
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.999


def test_root_module_and_shared_modules():
    qlinear, info = dynamic_quantize(nn.Linear(64, 64))
    assert isinstance(qlinear, QuantizedLinear) and list(info.layers) == [""]
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    qmodel, info = dynamic_quantize(model, min_params=0)
    assert isinstance(qmodel[0], QuantizedLinear) and qmodel[0] is qmodel[2]
    assert list(info.layers) == ["0"]


def test_dtype_aliases():
    model = make_mlp()
    for alias in (torch.qint8, torch.int8, "INT8"):
        assert isinstance(dynamic_quantize(model, alias)[0][0], QuantizedLinear)
    assert dynamic_quantize(model, torch.float16)[0][0].weight.dtype == torch.float16


def test_invalid_arguments_name_the_valid_choices(monkeypatch):
    with pytest.raises(ValueError, match=re.escape("dtype must be one of 'int8', 'int4', 'fp16'; got 'int3'")):
        dynamic_quantize(make_mlp(), "int3")
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'group'; valid options: dtype, .*group_size"):
        dynamic_quantize(make_mlp(), group=64)
    with pytest.raises(TypeError, match="model must be an nn.Module or a state_dict"):
        dynamic_quantize([torch.zeros(3)])
    monkeypatch.delitem(registry._SCHEMES, "fp16")
    with pytest.raises(ValueError, match="no quantization scheme is registered for dtype 'fp16'; available: 'int8'"):
        dynamic_quantize(make_mlp(), "fp16")


def test_uncopyable_model_gets_a_clear_error():
    class Uncopyable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)

        def __deepcopy__(self, memo):
            raise RuntimeError("no copies")

    with pytest.raises(TypeError, match="could not copy the model .*pass its state_dict"):
        dynamic_quantize(Uncopyable())


def test_state_dict_mode_round_trip(backend):
    model = make_cnn()
    sd = model.state_dict()
    original = {k: v.clone() for k, v in sd.items()}
    qsd, info = dynamic_quantize(sd, min_params=0)
    assert list(qsd) == [
        "0.weight", "0.weight_scale", "0.weight_zero_point", "0.bias",
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "3.weight", "3.weight_scale", "3.weight_zero_point", "3.bias",
        "6.weight", "6.weight_scale", "6.weight_zero_point", "6.bias",
    ]
    assert qsd["3.weight"].dtype == torch.int8 and qsd["3.weight"].shape == sd["3.weight"].shape
    assert qsd["3.weight_scale"].dtype == torch.float32 and qsd["3.weight_zero_point"].dtype == torch.int32
    assert info.quantized == ["0", "3", "6"]
    assert info.skipped == {"1": "1-D weight: only 2-D (Linear-like) and 4-D (Conv2d-like) weights are quantized"}
    for key in ("0.bias", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(qsd[key], sd[key]) and qsd[key].data_ptr() != sd[key].data_ptr()
    assert all(torch.equal(sd[k], original[k]) for k in sd)  # the input is untouched
    restored = dequantize_state_dict(qsd)
    assert list(restored) == list(sd)
    for prefix in ("0", "3", "6"):
        err = (restored[f"{prefix}.weight"] - sd[f"{prefix}.weight"]).abs()
        bound = qsd[f"{prefix}.weight_scale"].reshape(-1, *[1] * (err.dim() - 1)) / 2
        assert bool((err <= bound * (1 + 1e-6)).all())
    model.load_state_dict(restored)  # loads straight back into the float model


def test_state_dict_mode_asymmetric_per_tensor(backend):
    sd = collections.OrderedDict(w=torch.randn(8, 8), **{"fc.weight": torch.randn(64, 32) + 2})
    qsd, info = dynamic_quantize(sd, symmetric=False, per_channel=False, min_params=0)
    assert qsd["fc.weight"].dtype == torch.uint8
    assert torch.unique(qsd["fc.weight_scale"]).numel() == 1 and qsd["fc.weight_scale"].shape == (64,)
    assert info.skipped == {"": "has no 'weight' tensor"}
    restored = dequantize_state_dict(qsd)
    assert (restored["fc.weight"] - sd["fc.weight"]).abs().max() <= qsd["fc.weight_scale"][0] / 2 * (1 + 1e-6)
    assert torch.equal(restored["w"], sd["w"])


def test_dequantize_state_dict_rejects_foreign_formats():
    bad = {"fc.weight": torch.zeros(4, 4, dtype=torch.int8), "fc.weight_scale": torch.ones(4, 2),
           "fc.weight_zero_point": torch.zeros(4, 2, dtype=torch.int32)}
    with pytest.raises(ValueError, match="layer 'fc' has a weight_scale in a format no registered scheme reads"):
        dequantize_state_dict(bad)


class _NegateScheme(Scheme):
    """A toy scheme: Linear weights negated in place, to check the registry plumbing."""

    supported_types = (nn.Linear,)

    def convert_module(self, name, module):
        module.weight.neg_()
        return module, LayerInfo(name, "Linear", "negate", "float32", tuple(module.weight.shape), 0, 0)

    def skip_state_reason(self, prefix, tensors):
        return "state dicts are not supported"

    def convert_state(self, prefix, tensors):
        raise AssertionError("not called")


def test_registered_schemes_are_usable_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    register_scheme("negate", _NegateScheme)
    assert get_scheme("negate") is _NegateScheme
    assert QuantizationConfig(dtype="negate").dtype == "negate"
    model = nn.Sequential(nn.Linear(32, 32))
    out, info = dynamic_quantize(model, "negate", min_params=0)
    assert torch.equal(out[0].weight, -model[0].weight) and info.layers["0"].scheme == "negate"
    with pytest.raises(ValueError, match="already registered .*pass replace=True"):
        register_scheme("negate", Int8Scheme)
    register_scheme("negate", Int8Scheme, replace=True)
    assert get_scheme("negate") is Int8Scheme
    with pytest.raises(TypeError, match="subclass of mono_quant.schemes.Scheme"):
        register_scheme("thing", object)


def test_public_api():
    assert mono_quant.__version__ == "0.1.0"
    for name in ("dynamic_quantize", "QuantizationConfig", "QuantizationInfo", "LayerInfo", "register_scheme", "nn"):
        assert name in mono_quant.__all__ and hasattr(mono_quant, name)
    assert mono_quant.nn.QuantizedLinear is QuantizedLinear
