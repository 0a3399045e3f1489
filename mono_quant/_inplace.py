"""The parts of ``dynamic_quantize(..., inplace=True)`` that differ from the copying run.

In place, memory grows by about one layer: a layer's float tensors are released as soon as
its quantized form exists (the module loop lives in ``quantize.py``; a state_dict is handled
here). The end-of-run checks that need the original model (size, save + load into a copy of
it) cannot run, so they are reported as skipped; SQNR (measured during conversion) and value
ranges still are.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import nn

from ._layers import skipped_layer, state_kind
from .errors import PartialConversionError
from .info import QuantizationInfo
from .selection import state_skip_reason, tied_weights
from .state_dict import rebuild_state_dict, split_key
from .validate import CheckResult, act_on_report, validate

IN_PLACE_CHECKS = ("sqnr", "range")
_SKIPPED_IN_PLACE = {
    "size": "in place: the original is gone; info.total_bytes_before / total_bytes_after give the sizes",
    "load": "in place: the save + load check builds a copy of the original; run validate() on a copy if needed",
}


def quantize_state_dict_in_place(state_dict: Mapping[str, Any], schemes: Any, info: QuantizationInfo) -> Mapping[str, Any]:
    """Replace the entries of ``state_dict`` (a mutable mapping) by their quantized form, layer
    by layer, dropping each layer's float tensors once converted; returns ``state_dict``.

    >>> sd, info = dynamic_quantize(model.state_dict(), "int8", inplace=True)
    """
    if not isinstance(state_dict, MutableMapping):
        raise TypeError(f"inplace=True needs a mutable state_dict (a dict); got {type(state_dict).__name__}")
    # The key order and the non-tensor values, without holding on to the tensors.
    placeholder = torch.empty(0, device="meta")
    order = {key: placeholder if isinstance(value, torch.Tensor) else value for key, value in state_dict.items()}
    layers: dict[str, list[str]] = {}
    for key, value in order.items():
        if value is placeholder:
            layers.setdefault(split_key(key)[0], []).append(key)
    converted: dict[str, dict[str, torch.Tensor]] = {}
    done: list[str] = []
    tied = tied_weights(state_dict)
    with torch.no_grad():
        for prefix, keys in layers.items():
            tensors = {split_key(key)[1]: state_dict[key] for key in keys}
            try:
                converted[prefix], record = _convert(prefix, tensors, schemes, tied.get(prefix))
            except Exception as exc:
                raise PartialConversionError(prefix, done, exc) from exc
            for key in keys:  # the float tensors go now, not at the end
                del state_dict[key]
            del tensors
            info.add(record)
            if record.quantized:
                done.append(prefix)
    result = rebuild_state_dict(order, converted)
    state_dict.clear()
    state_dict.update(result)
    return state_dict


def _convert(prefix: str, tensors: Mapping[str, torch.Tensor], schemes: Any, tied_to: str | None):
    scheme = schemes.for_layer(prefix, tensors=tensors)
    reason = state_skip_reason(prefix, tensors, scheme, tied_to)
    if reason is None:
        return scheme.convert_state(prefix, tensors)
    return dict(tensors), skipped_layer(prefix, state_kind(prefix, tensors), tensors, reason)  # kept, not copied


def validate_in_place(result: nn.Module | Mapping[str, Any], info: QuantizationInfo) -> None:
    """The end-of-run checks of an in-place run (``IN_PLACE_CHECKS``; the others are reported
    as skipped), acting on a failure as ``config.on_failure`` says."""
    config = info.config
    checks = [c for c in IN_PLACE_CHECKS if c != "sqnr" or config.compute_sqnr]
    nothing: nn.Module | dict = nn.Module() if isinstance(result, nn.Module) else {}
    report = validate(nothing, result, info=info, checks=checks)  # SQNRs come from info
    for name, why in _SKIPPED_IN_PLACE.items():
        report.checks[name] = CheckResult(name, "skipped", why)
    act_on_report(report, info)
