"""mono_quant: weight quantization (INT8, FP16; INT4 to come) for PyTorch models.

>>> import mono_quant
>>> qmodel, info = mono_quant.dynamic_quantize(model, "int8")
"""

from . import nn
from .config import QuantizationConfig
from .info import LayerInfo, QuantizationInfo
from .quantize import dynamic_quantize
from .schemes import Scheme, get_scheme, register_scheme
from .state_dict import dequantize_state_dict

__version__ = "0.1.0"

__all__ = [
    "LayerInfo",
    "QuantizationConfig",
    "QuantizationInfo",
    "Scheme",
    "__version__",
    "dequantize_state_dict",
    "dynamic_quantize",
    "get_scheme",
    "nn",
    "register_scheme",
]
