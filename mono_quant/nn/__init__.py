"""Quantized replacements for torch layers: one class per file.

>>> from mono_quant.nn import QuantizedLinear
>>> QuantizedLinear.from_float(torch.nn.Linear(64, 32))
"""

from .qconv2d import QuantizedConv2d
from .qconv2d_static import StaticQuantizedConv2d
from .qembedding import QuantizedEmbedding
from .qembedding_bag import QuantizedEmbeddingBag
from .qlinear import QuantizedLinear
from .qlinear_int4 import QuantizedLinearInt4
from .qlinear_static import StaticQuantizedLinear

__all__ = [
    "QuantizedConv2d",
    "QuantizedEmbedding",
    "QuantizedEmbeddingBag",
    "QuantizedLinear",
    "QuantizedLinearInt4",
    "StaticQuantizedConv2d",
    "StaticQuantizedLinear",
]
