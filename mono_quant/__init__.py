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

# Files, validation, streaming (io branch)
from .errors import CorruptFileError, ValidationError
from .formats import LayerFormat, register_format
from .io import load_quantized, save_quantized
from .streaming import quantize_checkpoint
from .validate import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "CorruptFileError",
    "LayerFormat",
    "LayerInfo",
    "QuantizationConfig",
    "QuantizationInfo",
    "Scheme",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "dequantize_state_dict",
    "dynamic_quantize",
    "get_scheme",
    "load_quantized",
    "nn",
    "quantize_checkpoint",
    "register_format",
    "register_scheme",
    "save_quantized",
    "validate",
]
