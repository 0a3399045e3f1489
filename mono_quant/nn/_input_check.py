"""The checks of what a quantized module is given: its sizes when built, its input in ``forward``.

``nn.Linear`` and ``nn.Conv2d`` refuse an integer input (their float weight does not match
it). A quantized module must refuse it too: without the check, dequantizing the weight "to
the input's dtype" truncates it to integers (an int64 tensor of zeros for a typical layer)
and the static modules quantize integer inputs as if they were floats.
"""

from __future__ import annotations

import torch
from torch import nn

# What every quantized module computes with: the C kernels take the first three, the torch
# path (dequantize + F.linear / F.conv2d) also float64.
FLOAT_INPUT_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.float64))
_NAMES = "float32, float16, bfloat16 or float64"


def check_float_input(module: nn.Module, x: object) -> None:
    """Raise ``TypeError`` unless ``x`` is a tensor of a floating dtype the module takes.

    >>> check_float_input(layer, torch.randn(2, layer.in_features))   # passes
    >>> check_float_input(layer, torch.ones(2, layer.in_features, dtype=torch.int64))
    Traceback (most recent call last):
    TypeError: QuantizedLinear takes a floating-point input (float32, float16, bfloat16 or float64); got torch.int64 ...
    """
    dtype = getattr(x, "dtype", None)
    if isinstance(x, torch.Tensor) and dtype in FLOAT_INPUT_DTYPES:
        return
    got = str(dtype) if isinstance(x, torch.Tensor) else f"a {type(x).__name__}, not a tensor"
    raise TypeError(
        f"{type(module).__name__} takes a floating-point input ({_NAMES}); got {got}; "
        "convert it first, e.g. x.float() (as nn.Linear and nn.Conv2d, it does not take integer inputs)"
    )


def check_features(in_features: int, out_features: int) -> tuple[int, int]:
    """``(in_features, out_features)`` as ints, or a ValueError unless both are positive.

    >>> check_features(64, 32)
    (64, 32)
    """
    if in_features <= 0 or out_features <= 0:
        raise ValueError(f"in_features and out_features must be positive; got {in_features} and {out_features}")
    return int(in_features), int(out_features)
