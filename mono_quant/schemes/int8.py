"""The "int8" scheme: nn.Linear -> QuantizedLinear, nn.Conv2d -> QuantizedConv2d.

Weights are quantized per output channel (axis 0) or per tensor, symmetric (int8, zero
point 0) or asymmetric (uint8 with zero points), as ``docs/design.md`` specifies.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import _kernels as K
from .._int8 import dequantize_weight_int8, int8_qdtype, quantize_weight_int8
from .._layers import dtype_name, int8_bits_per_weight, own_tensors, state_kind, tensor_bytes
from ..info import LayerInfo
from ..nn import QuantizedConv2d, QuantizedLinear
from .base import Scheme

# Weight ranks the state_dict path quantizes: Linear-like and Conv2d-like layers.
STATE_RANKS = (2, 4)


class Int8Scheme(Scheme):
    """INT8 weights with a float32 scale and int32 zero point per output channel.

    >>> qmodel, info = dynamic_quantize(model, "int8", per_channel=False, symmetric=False)
    """

    name = "int8"
    supported_types = (nn.Linear, nn.Conv2d)
    _replacements: dict[type[nn.Module], type[QuantizedLinear] | type[QuantizedConv2d]] = {
        nn.Linear: QuantizedLinear,
        nn.Conv2d: QuantizedConv2d,
    }

    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        if type(module) is nn.Linear:
            return self._convert_linear(name, module)
        quantized = self._replacements[type(module)].from_float(module, self.config)
        return quantized, self._record(
            name,
            type(module).__name__,
            module.weight,
            quantized.dequantized_weight,
            tensor_bytes(own_tensors(module).values()),
            quantized.storage_bytes(),
            int8_qdtype(quantized.symmetric),
            has_bias=quantized.bias is not None,
        )

    def _convert_linear(self, name: str, module: nn.Linear) -> tuple[nn.Module, LayerInfo]:
        # Measured on the file-layout triple before packing: the float copy the SQNR needs is
        # then the only temporary, so a layer costs at most its float size + its int8 size.
        cfg = self.config
        q, scale, zp = quantize_weight_int8(module.weight, symmetric=cfg.symmetric, per_channel=cfg.per_channel)
        canonical = [q, scale, zp] + ([] if module.bias is None else [module.bias])
        record = self._record(
            name, type(module).__name__, module.weight, lambda dtype: dequantize_weight_int8(q, scale, zp, dtype),
            tensor_bytes(own_tensors(module).values()), tensor_bytes(canonical), q.dtype,
            has_bias=module.bias is not None,
        )
        return QuantizedLinear.from_quantized(module, q, scale, zp, per_channel=cfg.per_channel), record

    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        weight = tensors.get("weight")
        if weight is None:
            return "has no 'weight' tensor"
        if not weight.is_floating_point():
            return f"weight is {dtype_name(weight.dtype)}, not floating point"
        if weight.dim() not in STATE_RANKS:
            return (
                f"{weight.dim()}-D weight: only 2-D (Linear-like) and 4-D (Conv2d-like) weights "
                "are quantized"
            )
        return None

    def convert_state(
        self, prefix: str, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], LayerInfo]:
        weight = tensors["weight"]
        q, scale, zp = quantize_weight_int8(
            weight, symmetric=self.config.symmetric, per_channel=self.config.per_channel
        )
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            out[key] = q if key == "weight" else tensor.detach().clone()
            if key == "weight":
                out["weight_scale"], out["weight_zero_point"] = scale, zp
        record = self._record(
            prefix,
            state_kind(prefix, tensors),
            weight,
            lambda dtype: dequantize_weight_int8(q, scale, zp, dtype),
            tensor_bytes(tensors.values()),
            tensor_bytes(out.values()),
            q.dtype,
            has_bias="bias" in tensors,
        )
        return out, record

    @classmethod
    def dequantize_state(
        cls, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor] | None:
        weight, scale, zp = (tensors.get(k) for k in ("weight", "weight_scale", "weight_zero_point"))
        if weight is None or scale is None or zp is None:
            return None
        if weight.dtype not in (torch.int8, torch.uint8) or scale.dim() != 1 or scale.numel() != weight.shape[0]:
            return None
        out = {k: t for k, t in tensors.items() if k not in ("weight_scale", "weight_zero_point")}
        out["weight"] = dequantize_weight_int8(weight, scale, zp, dtype)
        return out

    def _record(self, name, module_type, weight, dequantize, before, after, qdtype, has_bias) -> LayerInfo:
        cfg = self.config
        return int8_layer_info(name, module_type, weight, dequantize, before, after, qdtype,
                               symmetric=cfg.symmetric, per_channel=cfg.per_channel, has_bias=has_bias,
                               compute_sqnr=cfg.compute_sqnr)


def int8_layer_info(name: str, module_type: str, weight: torch.Tensor, dequantize, before: int, after: int,
                    qdtype: torch.dtype, *, symmetric: bool, per_channel: bool, has_bias: bool, compute_sqnr: bool,
                    channel: str = "channel") -> LayerInfo:
    """The report line of a layer whose weight became INT8 (Linear, Conv2d, embedding tables:
    ``channel="row"``): scheme, sizes, SQNR of ``dequantize(torch.float32)`` against ``weight``.

    >>> int8_layer_info("fc", "Linear", w, layer.dequantized_weight, 4096, 1088, torch.int8,
    ...                 symmetric=True, per_channel=True, has_bias=True, compute_sqnr=True).scheme
    'int8 per-channel symmetric'
    """
    granularity = f"per-{channel}" if per_channel else "per-tensor"
    symmetry = "symmetric" if symmetric else "asymmetric"
    sqnr = K.sqnr(weight, dequantize(torch.float32)) if compute_sqnr else None
    return LayerInfo(
        name=name,
        module_type=module_type,
        scheme=f"{dtype_name(qdtype)} {granularity} {symmetry}",
        dtype=dtype_name(qdtype),
        shape=tuple(weight.shape),
        bytes_before=before,
        bytes_after=after,
        sqnr_db=sqnr,
        details={
            "per_channel": per_channel,
            "symmetric": symmetric,
            "weight_dtype": dtype_name(weight.dtype),
            "bias": has_bias,
            "bits_per_weight": int8_bits_per_weight(tuple(weight.shape), per_channel),
        },
    )
