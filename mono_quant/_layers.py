"""Small helpers that describe a layer's tensors: which it owns, their bytes, their dtype."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .info import LayerInfo


def own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers that ``module`` holds itself (not its children's), by name.

    >>> list(own_tensors(nn.Linear(2, 3)))
    ['weight', 'bias']
    """
    tensors = {name: p for name, p in module.named_parameters(recurse=False)}
    tensors.update((name, b) for name, b in module.named_buffers(recurse=False))
    return tensors


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors' elements take (``numel * element_size`` summed).

    >>> tensor_bytes(nn.Linear(2, 3).parameters())
    36
    """
    return sum(t.numel() * t.element_size() for t in tensors)


def main_tensor(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The tensor that stands for a layer in reports: ``weight``, else its first floating tensor."""
    if "weight" in tensors:
        return tensors["weight"]
    floating = [t for t in tensors.values() if t.is_floating_point()]
    return floating[0] if floating else next(iter(tensors.values()), None)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``'float32'``."""
    return str(dtype).removeprefix("torch.")


def skipped_layer(name: str, module_type: str, tensors: Mapping[str, torch.Tensor], reason: str) -> LayerInfo:
    """The record of a layer left as it was, with the reason.

    >>> skipped_layer("norm", "LayerNorm", own_tensors(nn.LayerNorm(4)), "stays float").bytes_after
    32
    """
    main = main_tensor(tensors)
    size = tensor_bytes(tensors.values())
    return LayerInfo(
        name=name,
        module_type=module_type,
        scheme="",
        dtype="" if main is None else dtype_name(main.dtype),
        shape=() if main is None else tuple(main.shape),
        bytes_before=size,
        bytes_after=size,
        status="skipped",
        reason=reason,
    )


def state_kind(prefix: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """What the state_dict entries of layer ``prefix`` look like, judged by its ``weight``:
    2-D is "Linear-like" ("Embedding-like" when the name contains "embed"), 4-D "Conv2d-like".

    >>> state_kind("encoder.fc", {"weight": torch.zeros(4, 8)})
    'Linear-like'
    """
    weight = tensors.get("weight")
    if weight is None:
        return "tensors"
    if weight.dim() == 2:
        return "Embedding-like" if "embed" in prefix.rsplit(".", 1)[-1].lower() else "Linear-like"
    if weight.dim() == 4:
        return "Conv2d-like"
    return f"{weight.dim()}-D weight"


def int8_bits_per_weight(shape: tuple[int, ...], per_channel: bool) -> float:
    """Stored bits per weight of an INT8 weight: 8 per value plus a float32 scale and an int32
    zero point per output channel (or per tensor). The bias is not counted.

    >>> int8_bits_per_weight((1536, 384), per_channel=True)
    8.166666666666666
    """
    numel = math.prod(shape)
    channels = shape[0] if per_channel and shape else 1
    return 8.0 + 64.0 * channels / numel if numel else 0.0


def int4_bits_per_weight(group_size: int) -> float:
    """Stored bits per weight of an INT4 weight: 4 per value plus an fp16 scale and a uint8
    zero point per group of ``group_size``.

    >>> int4_bits_per_weight(128)
    4.1875
    """
    return 4.0 + 24.0 / group_size
