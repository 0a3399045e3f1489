"""QuantizedLinearInt4: built from a float layer, it computes what the float layer does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mono_quant import _kernels as K
from mono_quant.nn.qlinear_int4 import QuantizedLinearInt4

from helpers import assert_activation_rounding_close, cosine


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_method", ["absmax", "mse"])
def test_output_close_to_the_float_layer(backend, group_size, symmetric, scale_method):
    linear = nn.Linear(256, 64)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    q = QuantizedLinearInt4.from_float(linear, group_size, symmetric, scale_method)
    x = torch.randn(16, 256)
    assert cosine(q(x), linear(x)) > 0.99
    for key, value in linear.state_dict().items():  # the float layer is untouched
        assert torch.equal(value, before[key])


def test_buffers_attributes_and_forward(backend):
    linear = nn.Linear(256, 48)
    q = QuantizedLinearInt4.from_float(linear, group_size=64)
    assert (q.in_features, q.out_features, q.group_size, q.symmetric) == (256, 48, 64, True)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (48, 128)
    assert q.scale.dtype == torch.float16 and q.scale.shape == (48, 4)
    assert q.zero_point.dtype == torch.uint8 and bool((q.zero_point == 8).all())
    assert torch.equal(q.bias, linear.bias.detach())
    assert set(dict(q.named_buffers())) == {"packed", "bias"}
    assert list(q.state_dict()) == ["qweight", "scale", "zero_point", "bias"]
    expected = K.int4_quantize(linear.weight, 64, True, K.INT4_DEFAULT_SCALE_METHOD)
    for got, want in zip((q.qweight, q.scale, q.zero_point), expected, strict=True):
        assert torch.equal(got, want)
    w_hat = q.dequantized_weight()
    assert torch.equal(w_hat, K.int4_dequantize(*expected, group_size=64))
    x = torch.randn(5, 256)
    if backend == "c":  # the CPU fast path: int8 activations, within their rounding of float math
        packed = K.pack_linear_int4(q.qweight, q.scale, q.zero_point, 64)
        assert torch.equal(q(x), K.linear_int4(x, packed, 48, 256, 64, q.bias))
        assert_activation_rounding_close(q(x), x, w_hat, q.bias)
    else:  # the reference backend computes in float, as on CUDA
        assert torch.equal(q(x), F.linear(x, w_hat, linear.bias))
    assert "group_size=64" in repr(q) and "symmetric=True" in repr(q)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, dtype):
    q = QuantizedLinearInt4.from_float(nn.Linear(128, 32).to(dtype))
    assert q.bias.dtype == dtype
    x = torch.randn(4, 128, dtype=dtype)
    y = q(x)
    assert y.dtype == dtype
    if backend == "c":
        assert_activation_rounding_close(y, x, q.dequantized_weight(), q.bias)
    else:
        assert torch.equal(y, F.linear(x, q.dequantized_weight(dtype), q.bias))


def test_no_bias_and_asymmetric(backend):
    q = QuantizedLinearInt4.from_float(nn.Linear(128, 8, bias=False), symmetric=False)
    assert q.bias is None and not q.symmetric
    assert bool((q.zero_point <= 15).all())
    assert "bias=False" in q.extra_repr()


def test_storage_is_about_a_seventh_of_fp32(backend):
    linear = nn.Linear(1024, 1024)
    q = QuantizedLinearInt4.from_float(linear, group_size=128)
    fp32 = sum(p.numel() * p.element_size() for p in linear.parameters())
    assert q.storage_bytes() == 1024 * 512 + 1024 * 8 * 2 + 1024 * 8 + 1024 * 4
    assert 6.5 < fp32 / q.storage_bytes() < 8.0


def test_state_dict_round_trip(backend):
    q = QuantizedLinearInt4.from_float(nn.Linear(256, 16), group_size=128, symmetric=False)
    fresh = QuantizedLinearInt4(256, 16, group_size=128, symmetric=False)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(fresh(x), q(x))


def test_fresh_module_holds_a_zero_weight(backend):
    for symmetric in (True, False):
        fresh = QuantizedLinearInt4(64, 4, group_size=32, symmetric=symmetric)
        assert torch.equal(fresh.dequantized_weight(), torch.zeros(4, 64))


def test_dtype_casts_keep_the_fp16_scales(backend):
    q = QuantizedLinearInt4.from_float(nn.Linear(128, 8))
    scale = q.scale.clone()
    q.bfloat16()
    assert q.scale.dtype == torch.float16 and torch.equal(q.scale, scale)
    assert q.bias.dtype == torch.bfloat16
    assert q(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16
    q.float()
    assert q.scale.dtype == torch.float16 and q.bias.dtype == torch.float32


def test_supports_and_its_reasons():
    assert QuantizedLinearInt4.supports(nn.Linear(256, 8), 128) is None
    reason = QuantizedLinearInt4.supports(nn.Linear(96, 8), 128)
    assert reason == ("in_features (96) is not a multiple of group_size (128); "
                      "use group_size=32 (divides 96) or quantize this layer as INT8")
    assert "no INT4 group size divides it" in QuantizedLinearInt4.supports(nn.Linear(100, 8), 32)
    assert "nn.Linear weights only" in QuantizedLinearInt4.supports(nn.Conv2d(3, 8, 3), 32)
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, 256; got 100"):
        QuantizedLinearInt4.supports(nn.Linear(256, 8), 100)
    with pytest.raises(ValueError, match=r"cannot store this layer as INT4: in_features \(96\)"):
        QuantizedLinearInt4.from_float(nn.Linear(96, 8), group_size=128)
    with pytest.raises(ValueError, match="must be a multiple of group_size"):
        QuantizedLinearInt4(96, 8, group_size=64)


def test_training_flag_and_autograd_to_the_input(backend):
    linear = nn.Linear(64, 4).eval()
    q = QuantizedLinearInt4.from_float(linear, group_size=32)
    assert not q.training
    x = torch.randn(2, 64, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
