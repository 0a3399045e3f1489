"""State-dict mode: quantize the tensors of a ``state_dict`` without a model, and back.

Entries are grouped by layer: ``"encoder.fc.weight"`` belongs to layer ``"encoder.fc"``
with key ``"weight"``. A quantized weight stays at its key (now int8) and gains
``<layer>.weight_scale`` and ``<layer>.weight_zero_point`` right after it; every other
entry keeps its key and value. The input is never modified and shares no storage with
the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._layers import skipped_layer, state_kind
from .info import QuantizationInfo
from .schemes.registry import get_scheme, scheme_names
from .selection import state_skip_reason, tied_weights


def split_key(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; ``"weight"`` -> ``("", "weight")``."""
    prefix, _, attr = key.rpartition(".")
    return prefix, attr


def join_key(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def group_by_layer(state_dict: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Tensor entries grouped by layer prefix, in first-seen order (non-tensors are left out).

    >>> group_by_layer({"fc.weight": w, "fc.bias": b})
    {'fc': {'weight': w, 'bias': b}}
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings; got {key!r}")
        if isinstance(value, torch.Tensor):
            prefix, attr = split_key(key)
            groups.setdefault(prefix, {})[attr] = value
    return groups


def quantize_state_dict(state_dict: Mapping[str, Any], schemes: Any, info: QuantizationInfo) -> dict[str, Any]:
    """The quantized copy of ``state_dict``; each layer is recorded in ``info``. ``schemes``
    is a ``Scheme`` or anything with ``for_layer(prefix) -> Scheme`` (per-layer overrides).

    >>> new_sd = quantize_state_dict(model.state_dict(), Int8Scheme(config), info)
    """
    converted: dict[str, dict[str, torch.Tensor]] = {}
    tied = tied_weights(state_dict)
    kept: set[str] = set()
    with torch.no_grad():
        for prefix, tensors in group_by_layer(state_dict).items():
            converted[prefix], record = convert_state_layer(prefix, tensors, schemes, tied.get(prefix))
            info.add(record)
            if prefix in tied and not record.quantized:
                kept.add(prefix)
                if tied[prefix] in kept:  # one copy for both names, as in the original
                    converted[prefix]["weight"] = converted[tied[prefix]]["weight"]
    return _rebuild(state_dict, converted)


def convert_state_layer(prefix: str, tensors: Mapping[str, torch.Tensor], schemes: Any, tied_to: str | None = None):
    """The new entries of one state_dict layer (copies when it is skipped) and its record;
    ``tied_to`` names the layer whose weight this layer's is (both then stay float)."""
    scheme = schemes.for_layer(prefix, tensors=tensors) if hasattr(schemes, "for_layer") else schemes
    reason = state_skip_reason(prefix, tensors, scheme, tied_to)
    if reason is None:
        return scheme.convert_state(prefix, tensors)
    return ({k: t.detach().clone() for k, t in tensors.items()},
            skipped_layer(prefix, state_kind(prefix, tensors), tensors, reason))


def rebuild_state_dict(original: Mapping[str, Any], converted: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """The entries of ``original`` with each layer's replaced by ``converted[prefix]``, in the
    original key order (new keys of a layer follow its ``weight``)."""
    return _rebuild(original, converted)


def dequantize_state_dict(state_dict: Mapping[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Float weights back from a state_dict made by ``dynamic_quantize`` (scale and zero-point
    entries are dropped); other entries are copied unchanged.

    >>> qsd, info = dynamic_quantize(model.state_dict())
    >>> model.load_state_dict(dequantize_state_dict(qsd))
    """
    converted: dict[str, dict[str, torch.Tensor]] = {}
    for prefix, tensors in group_by_layer(state_dict).items():
        if "weight_scale" not in tensors:
            converted[prefix] = {k: t.detach().clone() for k, t in tensors.items()}
            continue
        for name in scheme_names():
            floats = get_scheme(name).dequantize_state(tensors, dtype)
            if floats is not None:
                converted[prefix] = floats
                break
        else:
            raise ValueError(
                f"layer {prefix!r} has a weight_scale in a format no registered scheme reads "
                f"(schemes: {', '.join(scheme_names())}); was it made by mono_quant?"
            )
    return _rebuild(state_dict, converted)


def _rebuild(original: Mapping[str, Any], converted: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Entries in the original key order; new keys of a layer follow its ``weight`` key."""
    out: dict[str, Any] = {}
    for key, value in original.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        prefix, attr = split_key(key)
        new = converted[prefix]
        if attr in new:
            out[key] = new[attr]
        if attr == "weight":
            out.update(_new_entries(prefix, new, original))
    for prefix, new in converted.items():  # layers without a weight key that gained entries
        out.update((k, t) for k, t in _new_entries(prefix, new, original).items() if k not in out)
    return out


def _new_entries(prefix: str, new: Mapping[str, torch.Tensor], original: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {join_key(prefix, a): t for a, t in new.items() if join_key(prefix, a) not in original}
