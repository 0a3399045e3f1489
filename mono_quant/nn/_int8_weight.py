"""Behaviour shared by the INT8 weight modules: buffers, loading a float weight, dequantizing."""

from __future__ import annotations

import torch
from torch import nn

from .. import _ops as ops
from .._int8 import int8_qdtype, quantize_weight_int8
from ._routes import NoScriptMixin


class Int8WeightMixin(NoScriptMixin):
    """Holds ``qweight`` (int8/uint8, weight shape), ``scale`` (float32 ``[out]``),
    ``zero_point`` (int32 ``[out]``) and an optional float ``bias``, all as buffers.

    >>> layer.dequantized_weight(torch.float16).dtype
    torch.float16
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bias: torch.Tensor | None
    per_channel: bool

    def _init_int8(
        self,
        shape: tuple[int, ...],
        bias: bool,
        symmetric: bool,
        per_channel: bool,
        device: torch.device | str | None,
        bias_dtype: torch.dtype,
    ) -> None:
        assert isinstance(self, nn.Module)
        qdtype = int8_qdtype(symmetric)
        out = shape[0]
        self.per_channel = bool(per_channel)
        self.register_buffer("qweight", torch.zeros(shape, dtype=qdtype, device=device))
        self.register_buffer("scale", torch.ones(out, dtype=torch.float32, device=device))
        zero = 0 if symmetric else 128
        self.register_buffer("zero_point", torch.full((out,), zero, dtype=torch.int32, device=device))
        self.register_buffer("bias", torch.zeros(out, dtype=bias_dtype, device=device) if bias else None)

    def _load_float(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Quantize ``weight`` into the buffers and copy ``bias``; both keep their device."""
        q, scale, zp = quantize_weight_int8(weight, symmetric=self.symmetric, per_channel=self.per_channel)
        self.qweight, self.scale, self.zero_point = q, scale, zp
        if bias is not None:
            self.bias = bias.detach().clone()

    @property
    def symmetric(self) -> bool:
        """True when the weight is stored as int8 with zero point 0, False for uint8."""
        return self.qweight.dtype == torch.int8

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the module computes with: ``(qweight - zero_point) * scale``.

        >>> layer.dequantized_weight().shape == layer.qweight.shape
        True
        """
        return ops.dequantize_int8(self.qweight, self.scale, self.zero_point, dtype)

    def storage_bytes(self) -> int:
        """Bytes of the layer's tensors (the file layout, held as it is), for size reports."""
        tensors = (self.qweight, self.scale, self.zero_point, self.bias)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def _int8_repr(self) -> str:
        granularity = "per_channel" if self.per_channel else "per_tensor"
        return f"qdtype={str(self.qweight.dtype).removeprefix('torch.')}, {granularity}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 (torch hook)
        key = prefix + "qweight"
        stored = state_dict.get(key)
        if stored is not None and stored.dtype != self.qweight.dtype:
            error_msgs.append(
                f"{key} is stored as {stored.dtype} but this module holds {self.qweight.dtype}; "
                f"build the module with symmetric={stored.dtype == torch.int8}"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,  # type: ignore[misc]
                                      missing_keys, unexpected_keys, error_msgs)


def check_int8_config(cls_name: str, config) -> None:
    """Refuse configs meant for another format (from_float builds INT8 weights only)."""
    if config.dtype != "int8":
        raise ValueError(
            f"{cls_name} holds int8 weights; pass a config with dtype='int8' (got {config.dtype!r})"
        )


def int8_linear_shapes(out_features: int, in_features: int, symmetric: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The canonical tensors of a packed INT8 Linear weight (dynamic and static): name ->
    (shape, dtype), as saved in files.

    >>> int8_linear_shapes(32, 64, True)["scale"]
    ((32,), torch.float32)
    """
    return {"qweight": ((out_features, in_features), int8_qdtype(symmetric)),
            "scale": ((out_features,), torch.float32), "zero_point": ((out_features,), torch.int32)}
