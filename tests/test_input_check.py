"""Every quantized module refuses integer inputs as nn.Linear / nn.Conv2d do, and keeps taking
every floating dtype it computed with (nn/_input_check.py)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mono_quant.nn import (
    QuantizedConv2d, QuantizedLinear, QuantizedLinearInt4, StaticQuantizedConv2d, StaticQuantizedLinear,
)

INTEGER_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def build(name: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(quantized module, its float original, an input shape)."""
    linear, conv = nn.Linear(64, 16), nn.Conv2d(3, 8, 3, padding=1)
    modules = {
        "QuantizedLinear": (lambda: QuantizedLinear.from_float(linear), linear, (4, 64)),
        "QuantizedLinearInt4": (lambda: QuantizedLinearInt4.from_float(linear, group_size=32), linear, (4, 64)),
        "StaticQuantizedLinear": (lambda: StaticQuantizedLinear.from_float(linear, input_range=(-3.0, 3.0)),
                                  linear, (4, 64)),
        "QuantizedConv2d": (lambda: QuantizedConv2d.from_float(conv), conv, (2, 3, 6, 6)),
        "StaticQuantizedConv2d": (lambda: StaticQuantizedConv2d.from_float(conv, input_range=(-3.0, 3.0)),
                                  conv, (2, 3, 6, 6)),
    }
    make, original, shape = modules[name]
    return make(), original, shape


NAMES = ["QuantizedLinear", "QuantizedLinearInt4", "StaticQuantizedLinear", "QuantizedConv2d",
         "StaticQuantizedConv2d"]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_integer_inputs_are_refused_naming_module_and_dtypes(backend, name, dtype):
    q, original, shape = build(name)
    x = (torch.randn(shape) * 3).to(dtype)
    with pytest.raises((RuntimeError, NotImplementedError)):
        original(x)  # what the float layer does with it
    message = (f"{name} takes a floating-point input (float32, float16, bfloat16 or float64); "
               f"got {dtype}; convert it first, e.g. x.float()")
    with pytest.raises(TypeError, match=re.escape(message)):
        q(x)
    with pytest.raises(TypeError, match=f"{name} takes a floating-point input .*; got a list, not a tensor"):
        q(x.tolist())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_every_float_dtype_is_still_taken(name, dtype):
    """float64 runs the torch path (the C kernels take the other three): kept as before."""
    q, original, shape = build(name)
    x = torch.randn(shape)
    y = q(x.to(dtype))
    assert y.dtype == dtype and y.shape == original(x).shape
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y.float(), q(x), rtol=0.05, atol=0.05)
