"""``dynamic_quantize``: weight quantization of a model or a state_dict, on a copy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._layers import own_tensors, skipped_layer
from ._working_copy import working_copy
from .config import QuantizationConfig
from .info import QuantizationInfo
from .schemes.base import Scheme
from .schemes.registry import get_scheme
from .selection import module_skip_reason, parameter_owners
from .state_dict import quantize_state_dict
from .validate import validate_after_quantization

ModelOrStateDict = nn.Module | Mapping[str, torch.Tensor]


def dynamic_quantize(
    model: ModelOrStateDict,
    dtype: str | torch.dtype | None = None,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    **options: Any,
) -> tuple[ModelOrStateDict, QuantizationInfo]:
    """Quantize the weights of ``model`` (an nn.Module or a state_dict); returns the new
    model and a report. The original is never modified.

    ``dtype`` is "int8" (default), "int4" (group-wise, Linear layers), "fp16" or another
    registered scheme (torch dtypes such as torch.qint8 and torch.quint4x2 are accepted). ``options`` are the fields of ``QuantizationConfig``; they
    override ``config`` (a QuantizationConfig, a dict or a TOML path), which overrides
    ``./mono_quant.toml`` / ``[tool.mono_quant]`` in ``./pyproject.toml``, which override the
    defaults. Layers that cannot be converted stay as they are and are listed in
    ``info.skipped`` with the reason. At the end the result is checked (``validate=True``;
    the report is ``info.validation``); a failed check warns, or raises with
    ``on_failure="error"``.

    >>> qmodel, info = dynamic_quantize(model, "int8", modules_to_not_convert=["lm_head"])
    >>> print(info)
    """
    cfg = QuantizationConfig.from_sources(config, dtype=dtype, **options)
    scheme = get_scheme(cfg.dtype)(cfg)
    info = QuantizationInfo(config=cfg)
    if isinstance(model, nn.Module):
        result: ModelOrStateDict = _quantize_module(model, scheme, info)
        scheme.finish_model(model, result)
    elif isinstance(model, Mapping):
        result = quantize_state_dict(model, scheme, info)
    else:
        raise TypeError(
            "model must be an nn.Module or a state_dict (a mapping of names to tensors); "
            f"got {type(model).__name__}"
        )
    scheme.finish(info)
    if cfg.validate:
        validate_after_quantization(model, result, info)
    return result, info


def _quantize_module(model: nn.Module, scheme: Scheme, info: QuantizationInfo) -> nn.Module:
    """Convert a deep copy of ``model`` layer by layer; the copy is returned."""
    root = working_copy(model, "dynamic_quantize", " or pass its state_dict() instead")
    slots = _parent_slots(root)
    owners = parameter_owners(root)
    with torch.no_grad():
        for name, module in list(root.named_modules()):
            tensors = own_tensors(module)
            if not tensors:
                continue
            reason = module_skip_reason(name, module, scheme, owners)
            if reason is not None:
                info.add(skipped_layer(name, type(module).__name__, tensors, reason))
                continue
            new, record = scheme.convert_module(name, module)
            if new is not module:
                new.train(module.training)
                for parent, attr in slots.get(id(module), []):
                    parent._modules[attr] = new
                if module is root:
                    root = new
            info.add(record)
    return root


def _parent_slots(root: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``id(child)`` -> every ``(parent, attribute)`` that holds it (shared modules have several)."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in root.modules():
        for attr, child in parent._modules.items():
            if child is not None:
                slots.setdefault(id(child), []).append((parent, attr))
    return slots
