"""Quantization that runs the model on calibration data: GPTQ (``gptq_quantize``), the per-layer
sensitivity of the model's output, and the mixed precision plan built on it.

The modules here import only lower layers (kernels, formats, schemes, nn, the calibration data
helpers); nothing below imports them.

>>> from mono_quant.calib import gptq_quantize
>>> q_model, info = gptq_quantize(model, loader, group_size=64, max_bits_per_weight=4.6)
"""

from .gptq_model import gptq_quantize
from .sensitivity import LayerChoice, PrecisionOption, PrecisionPlan

__all__ = ["LayerChoice", "PrecisionOption", "PrecisionPlan", "gptq_quantize"]
