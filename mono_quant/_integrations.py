"""After a model is quantized: let the library it comes from know, when that library is one
mono_quant integrates with (today: transformers, whose ``save_pretrained`` then writes the
``quantization_config``). Nothing is imported unless the model is such a library's model,
which means the library is already imported.
"""

from __future__ import annotations

from torch import nn

from .info import QuantizationInfo


def is_transformers_model(model: object) -> bool:
    """True for a transformers ``PreTrainedModel``, judged from its class alone (no import).

    >>> is_transformers_model(nn.Linear(2, 2))
    False
    """
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__ == "transformers.modeling_utils"
               for cls in type(model).__mro__)


def after_quantization(model: nn.Module, info: QuantizationInfo) -> None:
    """Record the quantization on ``model`` for its library (see the module docstring); an
    integration that cannot load (transformers < 5) becomes a line in ``info.warnings``."""
    if not is_transformers_model(model):
        return
    try:
        from .integrations.transformers import attach
    except ImportError as exc:
        info.warnings.append(f"save_pretrained cannot record this quantization ({exc}); save the model with "
                             "mono_quant.save_quantized instead")
        return
    attach(model, info)
