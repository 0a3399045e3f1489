"""mono_quant: weight quantization (INT8, INT4, FP16) for PyTorch models.

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

# ---- static quantization: observers, calibration, INT8 activations ----
from .calibration import CalibrationStats, LayerRange, calibrate  # noqa: E402 (kept apart for merges)
from .observers import Observer, get_observer, register_observer  # noqa: E402
from .static import static_quantize  # noqa: E402

__all__ += [
    "CalibrationStats",
    "LayerRange",
    "Observer",
    "calibrate",
    "get_observer",
    "register_observer",
    "static_quantize",
]

# ---- INT4 group-wise weights ----
from .nn import QuantizedLinearInt4  # noqa: E402 (kept apart for merges)

__all__ += ["QuantizedLinearInt4"]

# ---- files, validation, streaming: save/load, validate, quantize_checkpoint ----
from .errors import CorruptFileError, ValidationError  # noqa: E402 (kept apart for merges)
from .formats import LayerFormat, register_format  # noqa: E402
from .io import load_quantized, save_quantized  # noqa: E402
from .streaming import quantize_checkpoint  # noqa: E402
from .validate import ValidationReport, validate  # noqa: E402

__all__ += [
    "CorruptFileError",
    "LayerFormat",
    "ValidationError",
    "ValidationReport",
    "load_quantized",
    "quantize_checkpoint",
    "register_format",
    "save_quantized",
    "validate",
]
