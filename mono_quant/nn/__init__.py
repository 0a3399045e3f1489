"""Quantized replacements for torch layers: one class per file.

>>> from mono_quant.nn import QuantizedLinear
>>> QuantizedLinear.from_float(torch.nn.Linear(64, 32))
"""

from .qconv2d import QuantizedConv2d
from .qlinear import QuantizedLinear

__all__ = ["QuantizedConv2d", "QuantizedLinear"]

# ---- static quantization (calibrated INT8 inputs) ----
from .qconv2d_static import StaticQuantizedConv2d  # noqa: E402 (kept apart for merges)
from .qlinear_static import StaticQuantizedLinear  # noqa: E402

__all__ += ["StaticQuantizedConv2d", "StaticQuantizedLinear"]

# ---- INT4 group-wise weights ----
from .qlinear_int4 import QuantizedLinearInt4  # noqa: E402 (kept apart for merges)

__all__ += ["QuantizedLinearInt4"]
