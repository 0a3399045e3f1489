"""``dynamic_quantize``: weight quantization of a model or a state_dict, on a copy or in place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._inplace import quantize_state_dict_in_place, validate_in_place
from ._integrations import after_quantization
from ._layer_schemes import LayerSchemes, add_pattern_warnings, check_not_meta
from ._layers import own_tensors, skipped_layer
from ._working_copy import working_copy
from .config import QuantizationConfig
from .errors import PartialConversionError
from .info import QuantizationInfo
from .selection import module_skip_reason, parameter_owners
from .state_dict import group_by_layer, quantize_state_dict
from .validate import validate_after_quantization

ModelOrStateDict = nn.Module | Mapping[str, torch.Tensor]


def dynamic_quantize(
    model: ModelOrStateDict,
    dtype: str | torch.dtype | None = None,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    inplace: bool = False,
    **options: Any,
) -> tuple[ModelOrStateDict, QuantizationInfo]:
    """Quantize the weights of ``model`` (an nn.Module or a state_dict); returns the new
    model and a report. The original is never modified, unless ``inplace=True``.

    ``dtype`` is "int8" (default), "int4" (group-wise, Linear layers), "fp16" or another
    registered scheme (torch dtypes such as torch.qint8 and torch.quint4x2 are accepted). ``options`` are the fields of ``QuantizationConfig``; they
    override ``config`` (a QuantizationConfig, a dict or a TOML path), which overrides
    ``./mono_quant.toml`` / ``[tool.mono_quant]`` in ``./pyproject.toml``, which override the
    defaults. Layers that cannot be converted stay as they are and are listed in
    ``info.skipped`` with the reason. At the end the result is checked (``validate=True``;
    the report is ``info.validation``); a failed check warns, or raises with
    ``on_failure="error"``.

    ``inplace=True`` converts ``model`` itself, layer by layer, each float layer released as
    soon as its quantized module replaces it: memory grows by about one layer instead of a
    copy of the model (a state_dict is refilled with its quantized entries). Keep no other
    references to the float layers or their weights, or they stay alive. If a layer fails,
    a ``PartialConversionError`` names it and the layers already converted: the model is then
    partly quantized and yours to discard. The end-of-run checks are then the SQNR and value
    ranges (size and save + load need the original).

    >>> qmodel, info = dynamic_quantize(model, "int8", modules_to_not_convert=["lm_head"])
    >>> print(info)
    >>> model, info = dynamic_quantize(model, "int4", inplace=True)   # no copy
    """
    cfg = QuantizationConfig.from_sources(config, dtype=dtype, **options)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False; got {inplace!r}")
    schemes = LayerSchemes(cfg)
    info = QuantizationInfo(config=cfg)
    if isinstance(model, nn.Module):
        check_not_meta(model, "dynamic_quantize")
        add_pattern_warnings(info, (name for name, _ in model.named_modules()), cfg)
        root = model if inplace else working_copy(model, "dynamic_quantize", " or pass its state_dict() instead")
        schemes.default.start_model(root)
        result: ModelOrStateDict = _quantize_module(root, schemes, info, inplace)
        schemes.default.finish_model(model, result)
        after_quantization(result, info)
    elif isinstance(model, Mapping):
        check_not_meta(model, "dynamic_quantize")
        add_pattern_warnings(info, group_by_layer(model), cfg)
        result = (quantize_state_dict_in_place(model, schemes, info) if inplace
                  else quantize_state_dict(model, schemes, info))
    else:
        raise TypeError(
            "model must be an nn.Module or a state_dict (a mapping of names to tensors); "
            f"got {type(model).__name__}"
        )
    schemes.finish(info)
    if cfg.validate:
        if inplace:
            validate_in_place(result, info)
        else:
            validate_after_quantization(model, result, info)
    return result, info


def _quantize_module(root: nn.Module, schemes: LayerSchemes, info: QuantizationInfo, inplace: bool) -> nn.Module:
    """Convert ``root`` (a private copy, or the caller's model in place) layer by layer;
    returns it, or the new module when the root itself was converted."""
    slots = _parent_slots(root)
    owners = parameter_owners(root)
    converted: list[str] = []
    # Names, not modules: a list of modules would keep every replaced float layer alive.
    names = [name for name, _ in root.named_modules()]
    with torch.no_grad():
        for name in names:
            try:
                module = root if name == "" else root.get_submodule(name)
            except AttributeError:
                continue  # inside a layer already replaced (a Linear with children of its own)
            try:
                new, record = _convert_one(name, module, schemes, owners, info)
            except Exception as exc:
                if inplace:
                    raise PartialConversionError(name, converted, exc) from exc
                raise
            if new is not None and new is not module:
                new.train(module.training)
                for parent, attr in slots.pop(id(module), []):
                    parent._modules[attr] = new
                if module is root:
                    root = new
            if new is not None:
                converted.append(name)
                info.add(record)
            del module, new
    return root


def _convert_one(name, module, schemes: LayerSchemes, owners, info: QuantizationInfo):
    """``(replacement, record)`` for a converted layer, ``(None, None)`` for a skipped one
    (recorded here) or one without tensors."""
    tensors = own_tensors(module)
    if not tensors:
        return None, None
    scheme = schemes.for_layer(name, module)
    reason = module_skip_reason(name, module, scheme, owners)
    if reason is not None:
        info.add(skipped_layer(name, type(module).__name__, tensors, reason))
        return None, None
    return scheme.convert_module(name, module)


def _parent_slots(root: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``id(child)`` -> every ``(parent, attribute)`` that holds it (shared modules have several)."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in root.modules():
        for attr, child in parent._modules.items():
            if child is not None:
                slots.setdefault(id(child), []).append((parent, attr))
    return slots
