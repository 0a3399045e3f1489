"""The "int4" scheme: nn.Linear -> QuantizedLinearInt4, group-wise along the input features.

Weights are stored as the INT4 format of ``docs/design.md``: packed nibbles, one fp16 scale and
one uint8 zero point per group of ``group_size`` input features. Layers the format cannot hold
fall back to the "int8" scheme per output channel, and their record says so:
- an nn.Linear whose in_features is not a multiple of ``group_size`` (shapes are never padded);
- an nn.Conv2d (INT4 stores Linear weights only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from .. import _kernels as K
from .._layers import dtype_name, int4_bits_per_weight, own_tensors, state_kind, tensor_bytes
from ..info import LayerInfo, QuantizationInfo
from ..nn import QuantizedLinearInt4
from .base import Scheme
from .int8 import Int8Scheme

if TYPE_CHECKING:
    from ..config import QuantizationConfig

_T = TypeVar("_T")

CONV_FALLBACK = "INT4 stores Linear weights only; Conv2d weights are kept as INT8 per channel"
STATE_RANK_FALLBACK = "INT4 stores 2-D (Linear-like) weights only; 4-D weights are kept as INT8 per channel"


class Int4Scheme(Scheme):
    """INT4 Linear weights group-wise (``group_size``, ``symmetric``, ``scale_method`` of the
    config); the layers INT4 cannot hold become per-channel INT8 with ``details["fallback"]``.

    >>> qmodel, info = dynamic_quantize(model, "int4", group_size=64)
    >>> info.layers["fc"].details["group_size"]
    64
    """

    name = "int4"
    supported_types = (nn.Linear, nn.Conv2d)

    def __init__(self, config: QuantizationConfig) -> None:
        super().__init__(config)
        # The fallback: the int8 scheme's own code, per channel, with the symmetry the user
        # chose, else int8's default (int4's default, asymmetric, is about groups).
        symmetric = config.symmetric if config.symmetric_given else None
        self._int8 = Int8Scheme(dataclasses.replace(config, dtype="int8", per_channel=True, symmetric=symmetric))

    @property
    def int8_scheme(self) -> Int8Scheme:
        """The per-channel INT8 scheme this run falls back to (and mixed precision keeps)."""
        return self._int8

    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        cfg = self.config
        reason = (
            QuantizedLinearInt4.supports(module, cfg.group_size)
            if isinstance(module, nn.Linear) else CONV_FALLBACK
        )
        if reason is not None:
            return self._fallback(self._int8.convert_module(name, module), reason)
        # Measured on the file-layout triple before packing: the float copy the SQNR needs is
        # then the only temporary, so a layer costs at most its float size + its int4 size.
        g = cfg.group_size
        q, scale, zp = K.int4_quantize(module.weight, g, cfg.symmetric, cfg.scale_method)
        canonical = [q, scale, zp] + ([] if module.bias is None else [module.bias])
        record = self._record(
            name,
            type(module).__name__,
            module.weight,
            lambda dtype: K.int4_dequantize(q, scale, zp, g, dtype),
            tensor_bytes(own_tensors(module).values()),
            tensor_bytes(canonical),
            has_bias=module.bias is not None,
        )
        quantized = QuantizedLinearInt4.from_quantized(module, q, scale, zp, group_size=g, symmetric=cfg.symmetric)
        return quantized, record

    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        return self._int8.skip_state_reason(prefix, tensors)

    def convert_state(
        self, prefix: str, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], LayerInfo]:
        cfg = self.config
        weight = tensors["weight"]
        reason = divisibility_reason(weight.shape[1], cfg.group_size) if weight.dim() == 2 else STATE_RANK_FALLBACK
        if reason is not None:
            return self._fallback(self._int8.convert_state(prefix, tensors), reason)
        g = cfg.group_size
        q, scale, zp = K.int4_quantize(weight, g, cfg.symmetric, cfg.scale_method)
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            out[key] = q if key == "weight" else tensor.detach().clone()
            if key == "weight":
                out["weight_scale"], out["weight_zero_point"] = scale, zp
        record = self._record(
            prefix,
            state_kind(prefix, tensors),
            weight,
            lambda dtype: K.int4_dequantize(q, scale, zp, g, dtype),
            tensor_bytes(tensors.values()),
            tensor_bytes(out.values()),
            has_bias="bias" in tensors,
        )
        return out, record

    @classmethod
    def dequantize_state(
        cls, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor] | None:
        """Float entries of an INT4 layer; recognised from the tensors alone: a uint8 weight
        ``[out, in // 2]`` with a 2-D float16 scale and a uint8 zero point ``[out, in // g]``."""
        weight, scale, zp = (tensors.get(k) for k in ("weight", "weight_scale", "weight_zero_point"))
        group_size = state_group_size(weight, scale, zp)
        if group_size is None:
            return None
        out = {k: t for k, t in tensors.items() if k not in ("weight_scale", "weight_zero_point")}
        out["weight"] = K.int4_dequantize(weight, scale, zp, group_size, dtype)
        return out

    def finish(self, info: QuantizationInfo) -> None:
        """Warn when the group size made most Linear layers fall back to INT8: the run then
        stores far more than the ~4 bits per weight INT4 stands for."""
        warning = group_size_warning(info, self.config.group_size)
        if warning is not None:
            info.warnings.append(warning)

    @staticmethod
    def _fallback(converted: tuple[_T, LayerInfo], reason: str) -> tuple[_T, LayerInfo]:
        """The int8 scheme's result with its record marked as an int4 fallback."""
        new, record = converted
        return new, dataclasses.replace(
            record,
            scheme=f"{record.scheme} (int4 fallback)",
            details={**record.details, "fallback": reason},
        )

    def _record(self, name, module_type, weight, dequantize, before, after, has_bias) -> LayerInfo:
        cfg = self.config
        symmetry = "symmetric" if cfg.symmetric else "asymmetric"
        sqnr = K.sqnr(weight, dequantize(torch.float32)) if cfg.compute_sqnr else None
        return LayerInfo(
            name=name,
            module_type=module_type,
            scheme=f"int4 g{cfg.group_size} {symmetry} {cfg.scale_method}",
            dtype="int4",
            shape=tuple(weight.shape),
            bytes_before=before,
            bytes_after=after,
            sqnr_db=sqnr,
            details={
                "group_size": cfg.group_size,
                "symmetric": cfg.symmetric,
                "scale_method": cfg.scale_method,
                "weight_dtype": dtype_name(weight.dtype),
                "bias": has_bias,
                "bits_per_weight": int4_bits_per_weight(cfg.group_size),
            },
        )


def divisibility_reason(in_features: int, group_size: int) -> str | None:
    """Why a weight with ``in_features`` columns cannot be INT4 with ``group_size`` (the text of
    ``QuantizedLinearInt4.supports``), or None.

    >>> divisibility_reason(96, 128)
    'in_features (96) is not a multiple of group_size (128); use group_size=32 (divides 96) or quantize this layer as INT8'
    """
    if in_features % group_size == 0:
        return None
    return (f"in_features ({in_features}) is not a multiple of group_size ({group_size}); "
            f"{K.int4_group_size_hint(in_features)}")


def state_group_size(
    weight: torch.Tensor | None, scale: torch.Tensor | None, zero_point: torch.Tensor | None
) -> int | None:
    """The group size of a state_dict INT4 triple, or None when the tensors are not one.

    >>> state_group_size(torch.zeros(8, 64, dtype=torch.uint8), torch.zeros(8, 4, dtype=torch.float16),
    ...                  torch.zeros(8, 4, dtype=torch.uint8))
    32
    """
    if weight is None or scale is None or zero_point is None:
        return None
    if (weight.dtype != torch.uint8 or scale.dtype != torch.float16 or zero_point.dtype != torch.uint8
            or weight.dim() != 2 or scale.dim() != 2 or zero_point.shape != scale.shape):
        return None
    in_features, groups = 2 * weight.shape[1], scale.shape[1]
    if scale.shape[0] != weight.shape[0] or groups == 0 or in_features % groups:
        return None
    group_size = in_features // groups
    return group_size if group_size in K.INT4_GROUP_SIZES else None


def group_size_warning(info: QuantizationInfo, group_size: int) -> str | None:
    """The warning for a run where more than half of the quantized Linear(-like) layers fell
    back to INT8 because ``group_size`` does not divide their in_features, or None.

    >>> group_size_warning(info, 256)
    'group_size=256 does not divide the in_features of 30 of 36 Linear layers: ...'
    """
    linear = [layer for layer in info.layers.values()
              if layer.quantized and len(layer.shape) == 2 and (layer.dtype == "int4" or layer.details.get("fallback"))]
    fallen = [layer for layer in linear if str(layer.details.get("fallback", "")).startswith("in_features")]
    if not linear or 2 * len(fallen) <= len(linear):
        return None
    widths = {layer.shape[1] for layer in fallen}
    fits = {g: sum(1 for layer in linear if layer.shape[1] % g == 0) for g in K.INT4_GROUP_SIZES}
    best = max(fits.values())
    suggestion = max(g for g, n in fits.items() if n == best)
    where = "every one of them" if best == len(linear) else f"{best} of {len(linear)}"
    hint = (f"use group_size={suggestion} (divides the in_features of {where})" if best > len(linear) - len(fallen)
            else "no group size fits them better; quantize with dtype='int8' instead")
    bits = info.bits_per_weight
    shown = f"{bits:.2f}" if bits is not None else "?"
    return (f"group_size={group_size} does not divide the in_features of {len(fallen)} of {len(linear)} Linear "
            f"layers ({', '.join(map(str, sorted(widths)))} wide): they were stored as INT8, so the model "
            f"stores {shown} bits per weight instead of about {int4_bits_per_weight(group_size):.2f}; {hint}")
