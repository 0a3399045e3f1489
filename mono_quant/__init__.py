"""mono_quant: weight quantization (INT8, INT4, FP16) for PyTorch models.

>>> import mono_quant
>>> qmodel, info = mono_quant.dynamic_quantize(model, "int8")

transformers models: ``mono_quant.integrations.transformers`` (save_pretrained / from_pretrained).
"""

from . import nn
from .calib import LayerChoice, PrecisionPlan, gptq_quantize
from .calibration import CalibrationStats, LayerRange, calibrate
from .config import QuantizationConfig
from .errors import CorruptFileError, PartialConversionError, ValidationError
from .formats import LayerFormat, register_format
from .info import LayerInfo, QuantizationInfo
from .io import load_quantized, save_quantized
from .nn import QuantizedLinearInt4
from .observers import Observer, get_observer, register_observer
from .onnx_export import export_onnx
from .onnx_export import install_registration_hook as _install_onnx_hook
from .quantize import dynamic_quantize
from .schemes import Scheme, get_scheme, register_scheme
from .state_dict import dequantize_state_dict
from .static import static_quantize
from .streaming import quantize_checkpoint
from .validate import ValidationReport, validate

__version__ = "0.1.0"

# The ONNX translations of the mono_quant operators, registered when torch.onnx is imported
# (importing it here would cost about 0.1 s per import; see onnx_export).
_install_onnx_hook()

__all__ = [
    # quantize a model
    "dynamic_quantize",
    "static_quantize",
    "gptq_quantize",
    "calibrate",
    "QuantizationConfig",
    # what happened
    "QuantizationInfo",
    "LayerInfo",
    "CalibrationStats",
    "LayerRange",
    "PrecisionPlan",
    "LayerChoice",
    # files and checks
    "save_quantized",
    "load_quantized",
    "quantize_checkpoint",
    "validate",
    "ValidationReport",
    "ValidationError",
    "CorruptFileError",
    "PartialConversionError",
    "dequantize_state_dict",
    "export_onnx",
    # extending
    "Observer",
    "register_observer",
    "get_observer",
    "Scheme",
    "register_scheme",
    "get_scheme",
    "LayerFormat",
    "register_format",
    # modules
    "nn",
    "QuantizedLinearInt4",
    "__version__",
]
