"""INT8 weight quantization per output channel (or per tensor), built on the ``_kernels`` API.

The canonical INT8 weight format of ``docs/design.md``: ``qweight`` int8 (symmetric) or uint8
(asymmetric) of the weight's shape, ``scale`` float32 ``[out]`` and ``zero_point`` int32
``[out]``. Per-tensor quantization stores its single scale repeated over the ``out`` channels,
so every consumer reads one format.
"""

from __future__ import annotations

import torch

from . import _kernels as K


def int8_qdtype(symmetric: bool) -> torch.dtype:
    """torch.int8 for symmetric quantization, torch.uint8 (with zero points) for asymmetric.

    >>> int8_qdtype(False)
    torch.uint8
    """
    return torch.int8 if symmetric else torch.uint8


def quantize_weight_int8(
    weight: torch.Tensor, *, symmetric: bool = True, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(qweight, scale, zero_point)`` of a float weight ``[out, ...]``, on the weight's device.

    >>> q, scale, zp = quantize_weight_int8(linear.weight)
    >>> q.dtype, scale.shape
    (torch.int8, torch.Size([out_features]))
    """
    if weight.dim() < 1 or weight.numel() == 0:
        raise ValueError(f"cannot quantize an empty weight of shape {tuple(weight.shape)}")
    qdtype = int8_qdtype(symmetric)
    out = weight.shape[0]
    mn, mx = K.minmax(weight, axis=0 if per_channel else None)
    scale, zp = K.qparams(mn, mx, qdtype, symmetric=symmetric)
    if not per_channel:
        scale = scale.reshape(1).repeat(out)
        zp = zp.reshape(1).repeat(out)
    q = K.quantize(weight, scale, zp, axis=0, qdtype=qdtype)
    return q, scale, zp


def dequantize_weight_int8(
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The float weight ``(qweight - zero_point) * scale`` per output channel, as ``dtype``.

    >>> w_hat = dequantize_weight_int8(q, scale, zp, torch.float32)
    """
    return K.dequantize(qweight, scale, zero_point, axis=0, out_dtype=dtype)
