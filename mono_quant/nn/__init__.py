"""Quantized replacements for torch layers: one class per file.

>>> from mono_quant.nn import QuantizedLinear
>>> QuantizedLinear.from_float(torch.nn.Linear(64, 32))
"""

from .qconv2d import QuantizedConv2d
from .qlinear import QuantizedLinear

__all__ = ["QuantizedConv2d", "QuantizedLinear"]
