"""QuantizedConv2d: conv settings kept, numerics against the kernels, forward, state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mono_quant import QuantizationConfig
from mono_quant import _kernels as K
from mono_quant.nn import QuantizedConv2d

from helpers import cosine

CONVS = {
    "plain": lambda: nn.Conv2d(3, 8, 3),
    "strided": lambda: nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), bias=False),
    "dilated-grouped": lambda: nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2),
    "depthwise": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8),
    "same": lambda: nn.Conv2d(3, 8, (3, 5), padding="same"),
    "reflect": lambda: nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
    "circular-same": lambda: nn.Conv2d(3, 8, (3, 4), padding="same", padding_mode="circular"),
    "replicate": lambda: nn.Conv2d(3, 8, 3, padding=(2, 1), padding_mode="replicate"),
}


@pytest.mark.parametrize("kind", CONVS)
def test_matches_the_float_conv(backend, kind):
    conv = CONVS[kind]()
    q = QuantizedConv2d.from_float(conv)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(q, attr) == getattr(conv, attr), attr
    assert q._reversed_padding_repeated_twice == list(conv._reversed_padding_repeated_twice)
    x = torch.randn(2, conv.in_channels, 9, 10)
    out = q(x)
    reference = conv._conv_forward(x, q.dequantized_weight(), q.bias)
    assert torch.equal(out, reference)
    assert out.shape == conv(x).shape and cosine(out, conv(x)) > 0.999


@pytest.mark.parametrize("symmetric", [True, False])
def test_weights_are_the_kernel_results_per_output_channel(backend, symmetric):
    conv = nn.Conv2d(4, 6, 3)
    q = QuantizedConv2d.from_float(conv, QuantizationConfig(symmetric=symmetric))
    qdtype = torch.int8 if symmetric else torch.uint8
    w = conv.weight.detach()
    scale, zp = K.qparams(*K.minmax(w, axis=0), qdtype, symmetric=symmetric)
    assert q.qweight.shape == (6, 4, 3, 3) and q.qweight.dtype == qdtype
    assert torch.equal(q.qweight, K.quantize(w, scale, zp, axis=0, qdtype=qdtype))
    assert torch.equal(q.scale, scale) and torch.equal(q.zero_point, zp)


def test_forward_follows_the_input_dtype(backend):
    q = QuantizedConv2d.from_float(nn.Conv2d(3, 8, 3))
    x = torch.randn(1, 3, 6, 6)
    out = q(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and cosine(out, q(x)) > 0.999


def test_extra_repr_and_state_dict_round_trip():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
    q = QuantizedConv2d.from_float(conv)
    assert repr(q) == (
        "QuantizedConv2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=2, "
        "padding_mode='reflect', bias=True, qdtype=int8, per_channel)"
    )
    fresh = QuantizedConv2d(4, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(fresh(x), q(x))


def test_errors():
    with pytest.raises(TypeError, match="from_float needs an nn.Conv2d; got Linear"):
        QuantizedConv2d.from_float(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="must be divisible by groups"):
        QuantizedConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="padding_mode must be one of 'zeros', 'reflect'"):
        QuantizedConv2d(4, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="QuantizedConv2d holds int8 weights"):
        QuantizedConv2d.from_float(nn.Conv2d(4, 4, 3), QuantizationConfig(dtype="fp16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    conv = nn.Conv2d(3, 8, 3, padding=1).cuda()
    q = QuantizedConv2d.from_float(conv)
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert q.qweight.device.type == "cuda" and cosine(q(x), conv(x)) > 0.999
    assert torch.equal(q(x), F.conv2d(x, q.dequantized_weight(), q.bias, padding=1))
