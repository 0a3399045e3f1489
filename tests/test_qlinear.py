"""QuantizedLinear: buffers, numerics against the kernels, forward, state_dict, devices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mono_quant import QuantizationConfig
from mono_quant import _kernels as K
from mono_quant.nn import QuantizedLinear

from helpers import assert_activation_rounding_close, cosine


@pytest.mark.parametrize("symmetric", [True, False])
def test_from_float_buffers(backend, symmetric):
    linear = nn.Linear(48, 24)
    q = QuantizedLinear.from_float(linear, QuantizationConfig(symmetric=symmetric))
    assert (q.in_features, q.out_features) == (48, 24)
    assert q.qweight.dtype == (torch.int8 if symmetric else torch.uint8) and q.qweight.shape == (24, 48)
    assert q.scale.dtype == torch.float32 and q.scale.shape == (24,)
    assert q.zero_point.dtype == torch.int32 and q.zero_point.shape == (24,)
    if symmetric:
        assert bool((q.zero_point == 0).all())
    assert torch.equal(q.bias, linear.bias.detach()) and q.bias.data_ptr() != linear.bias.data_ptr()
    assert q.symmetric is symmetric
    # The weight is held once, packed; the file layout is what state_dict() holds.
    assert {n for n, _ in q.named_buffers()} == {"packed", "bias"}
    assert list(q.state_dict()) == ["qweight", "scale", "zero_point", "bias"]


def test_dequantized_weight_is_the_kernel_round_trip(backend):
    linear = nn.Linear(40, 16)
    q = QuantizedLinear.from_float(linear)
    w = linear.weight.detach()
    scale, zp = K.qparams(*K.minmax(w, axis=0), torch.int8, symmetric=True)
    expected = K.dequantize(K.quantize(w, scale, zp, axis=0), scale, zp, axis=0)
    assert torch.equal(q.dequantized_weight(), expected)
    assert q.dequantized_weight(torch.bfloat16).dtype == torch.bfloat16


def test_per_tensor_uses_one_scale(backend):
    q = QuantizedLinear.from_float(nn.Linear(32, 16), QuantizationConfig(per_channel=False))
    assert torch.unique(q.scale).numel() == 1 and q.scale.shape == (16,)
    assert "per_tensor" in repr(q)


def test_forward_is_the_linear_kernel_or_f_linear(backend):
    linear = nn.Linear(64, 32)
    q = QuantizedLinear.from_float(linear)
    x = torch.randn(5, 7, 64)
    if backend == "c":  # the CPU fast path: int8 activations, within their rounding of float math
        packed = K.pack_linear_int8(q.qweight, q.scale, q.zero_point)
        assert torch.equal(q(x), K.linear_int8(x, packed, 32, 64, q.bias))
        assert_activation_rounding_close(q(x), x, q.dequantized_weight(), q.bias)
    else:  # the reference backend computes in float, as on CUDA
        assert torch.equal(q(x), F.linear(x, q.dequantized_weight(), q.bias))
    assert cosine(q(x), linear(x)) > 0.9999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_follows_the_input_dtype(backend, dtype):
    q = QuantizedLinear.from_float(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    out = q(x.to(dtype))
    assert out.dtype == dtype
    assert cosine(out, q(x)) > 0.999


def test_no_bias_and_gradients_reach_the_input(backend):
    q = QuantizedLinear.from_float(nn.Linear(16, 8, bias=False))
    assert q.bias is None and "bias=False" in repr(q)
    x = torch.randn(3, 16, requires_grad=True)
    q(x).sum().backward()
    torch.testing.assert_close(x.grad, q.dequantized_weight().sum(0).expand(3, 16))


def test_extra_repr():
    q = QuantizedLinear.from_float(nn.Linear(16, 8), QuantizationConfig(symmetric=False))
    assert repr(q) == "QuantizedLinear(in_features=16, out_features=8, bias=True, qdtype=uint8, per_channel)"


def test_state_dict_round_trip():
    q = QuantizedLinear.from_float(nn.Linear(32, 16))
    fresh = QuantizedLinear(32, 16)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(2, 32)
    assert torch.equal(fresh(x), q(x))
    asym = QuantizedLinear.from_float(nn.Linear(32, 16), QuantizationConfig(symmetric=False))
    with pytest.raises(RuntimeError, match="QuantizedLinear.qweight must be int8; got uint8; build the module with symmetric=False"):
        fresh.load_state_dict(asym.state_dict())


def test_from_float_errors():
    with pytest.raises(ValueError, match="QuantizedLinear holds int8 weights; pass a config with dtype='int8' \\(got 'int4'\\)"):
        QuantizedLinear.from_float(nn.Linear(4, 4), QuantizationConfig(dtype="int4"))
    with pytest.raises(TypeError, match="from_float needs an nn.Linear; got Conv2d"):
        QuantizedLinear.from_float(nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="in_features and out_features must be positive"):
        QuantizedLinear(0, 4)


@settings(max_examples=25, deadline=None)
@given(
    out_features=st.integers(1, 12),
    in_features=st.integers(1, 12),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    magnitude=st.sampled_from([1e-6, 1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_error_is_at_most_half_a_step(out_features, in_features, symmetric, per_channel, magnitude, seed):
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)) * magnitude
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(weight)
    q = QuantizedLinear.from_float(linear, QuantizationConfig(symmetric=symmetric, per_channel=per_channel))
    err = (q.dequantized_weight() - weight).abs()
    assert bool((err <= q.scale[:, None] / 2 * (1 + 1e-5)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    linear = nn.Linear(64, 32).cuda()
    q = QuantizedLinear.from_float(linear)
    assert q.qweight.device.type == "cuda" and q.scale.device.type == "cuda"
    x = torch.randn(4, 64, device="cuda")
    assert cosine(q(x), linear(x)) > 0.9999
    cpu = QuantizedLinear.from_float(linear.cpu())
    assert torch.equal(q.qweight.cpu(), cpu.qweight)
