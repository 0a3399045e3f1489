"""The static INT8 scheme: nn.Linear -> StaticQuantizedLinear, nn.Conv2d -> StaticQuantizedConv2d.

Weights are quantized as the "int8" scheme does (per output channel by default); each
layer's input gets the scale and zero point of the range calibration observed for it.
Not registered as a dtype: it needs calibration ranges, so ``static_quantize`` creates it
with the ``CalibrationStats`` of its run. State dicts cannot be statically quantized (there
is no model to run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import _kernels as K
from .._layers import dtype_name, int8_bits_per_weight, own_tensors, tensor_bytes
from ..info import LayerInfo
from ..nn import StaticQuantizedConv2d, StaticQuantizedLinear
from .base import Scheme

if TYPE_CHECKING:
    from ..calibration import CalibrationStats, LayerRange
    from ..config import QuantizationConfig


class StaticInt8Scheme(Scheme):
    """INT8 weights per output channel and INT8 inputs per tensor with calibrated ranges.

    >>> scheme = StaticInt8Scheme(config, stats)
    >>> qlinear, record = scheme.convert_module("fc1", model.fc1)
    """

    name = "static_int8"
    supported_types = (nn.Linear, nn.Conv2d)
    _replacements: dict[type[nn.Module], type[StaticQuantizedLinear] | type[StaticQuantizedConv2d]] = {
        nn.Linear: StaticQuantizedLinear,
        nn.Conv2d: StaticQuantizedConv2d,
    }

    def __init__(self, config: QuantizationConfig, stats: CalibrationStats | None = None) -> None:
        super().__init__(config)
        self.stats = stats

    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        if self.stats is None or name not in self.stats.layers:
            raise ValueError(f"layer {name!r} has no calibrated input range; run calibrate() on this model first")
        observed = self.stats.layers[name]
        quantized = self._replacements[type(module)].from_float(module, self.config, input_range=observed.range)
        return quantized, self._record(name, module, quantized, observed)

    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        return "static quantization calibrates a model's activations; pass the nn.Module, not a state_dict"

    def convert_state(self, prefix, tensors):  # pragma: no cover - skip_state_reason refuses every entry
        raise TypeError("static quantization needs an nn.Module to calibrate")

    def _record(self, name: str, module: nn.Module, quantized, observed: LayerRange) -> LayerInfo:
        cfg = self.config
        weight = module.weight
        weight_sqnr = K.sqnr(weight, quantized.dequantized_weight(torch.float32)) if cfg.compute_sqnr else None
        scale = quantized.scale
        granularity = "per-channel" if cfg.per_channel else "per-tensor"
        symmetry = "symmetric" if cfg.symmetric else "asymmetric"
        act_dtype = dtype_name(quantized.input_qdtype)
        return LayerInfo(
            name=name,
            module_type=type(module).__name__,
            scheme=f"{dtype_name(quantized.qweight.dtype)} {granularity} {symmetry}, {act_dtype} static input",
            dtype=dtype_name(quantized.qweight.dtype),
            shape=tuple(weight.shape),
            bytes_before=tensor_bytes(own_tensors(module).values()),
            bytes_after=quantized.storage_bytes(),
            sqnr_db=None,  # static_quantize fills in the output SQNR on the held-back batch
            details={
                "per_channel": cfg.per_channel,
                "symmetric": cfg.symmetric,
                "weight_dtype": dtype_name(weight.dtype),
                "bias": quantized.bias is not None,
                "bits_per_weight": int8_bits_per_weight(tuple(weight.shape), cfg.per_channel),
                "observer": observed.observer,
                "input_range": observed.range,
                "input_seen": (observed.data_min, observed.data_max),
                "input_dtype": act_dtype,
                "input_scale": float(quantized.input_scale[0]),
                "input_zero_point": int(quantized.input_zero_point[0]),
                "weight_scale": {
                    "min": float(scale.min()),
                    "max": float(scale.max()),
                    "mean": float(scale.float().mean()),
                },
                "weight_sqnr_db": weight_sqnr,
            },
        )
