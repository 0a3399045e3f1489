"""Quantization schemes and their registry; importing this registers "int8", "fp16" and "int4".

>>> from mono_quant.schemes import get_scheme
>>> get_scheme("int8").supported_types
(<class 'torch.nn.modules.linear.Linear'>, <class 'torch.nn.modules.conv.Conv2d'>)
"""

from .base import Scheme
from .fp16 import Fp16Scheme
from .int4 import Int4Scheme
from .int8 import Int8Scheme
from .registry import get_scheme, register_scheme, scheme_names

register_scheme("int8", Int8Scheme)
register_scheme("fp16", Fp16Scheme)
register_scheme("int4", Int4Scheme)

__all__ = ["Fp16Scheme", "Int4Scheme", "Int8Scheme", "Scheme", "get_scheme", "register_scheme", "scheme_names"]
