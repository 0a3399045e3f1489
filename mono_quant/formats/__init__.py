"""Layer formats and their registry; importing this registers the built-in formats
(INT8 Linear and Conv2d, INT4 Linear, static INT8 Linear and Conv2d, INT8 embedding tables).

>>> from mono_quant.formats import format_for_module
>>> format_for_module(qmodel.fc).kind
'int8_linear'
"""

from .base import Expected, LayerFormat, RangeProblem
from .embedding import Int8EmbeddingBagFormat, Int8EmbeddingFormat
from .int4 import Int4LinearFormat
from .int8 import Int8Conv2dFormat, Int8LinearFormat
from .registry import (
    format_for_float_module, format_for_layer_of, format_for_module, format_for_state, format_kinds, get_format,
    register_format,
)
from .static_int8 import StaticInt8Conv2dFormat, StaticInt8LinearFormat

register_format(Int8LinearFormat())
register_format(Int8Conv2dFormat())
register_format(Int4LinearFormat())
register_format(StaticInt8LinearFormat())
register_format(StaticInt8Conv2dFormat())
register_format(Int8EmbeddingFormat())
register_format(Int8EmbeddingBagFormat())

__all__ = [
    "Expected",
    "Int4LinearFormat",
    "Int8EmbeddingBagFormat",
    "Int8EmbeddingFormat",
    "Int8Conv2dFormat",
    "Int8LinearFormat",
    "LayerFormat",
    "RangeProblem",
    "StaticInt8Conv2dFormat",
    "StaticInt8LinearFormat",
    "format_for_float_module",
    "format_for_layer_of",
    "format_for_module",
    "format_for_state",
    "format_kinds",
    "get_format",
    "register_format",
]
