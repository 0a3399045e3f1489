"""The layer format registry: ``kind`` -> ``LayerFormat`` and quantized class -> format.

Built-in formats register themselves when ``mono_quant.formats`` is imported; INT4, static
quantization or other packages call ``register_format`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .base import LayerFormat

_BY_KIND: dict[str, LayerFormat] = {}


def register_format(fmt: LayerFormat, *, replace: bool = False) -> LayerFormat:
    """Make ``fmt`` the format of ``fmt.kind`` and of modules of type ``fmt.module_type``.

    >>> register_format(Int4LinearFormat())
    """
    from .base import LayerFormat

    if not isinstance(fmt, LayerFormat):
        raise TypeError(f"a layer format must be a LayerFormat instance; got {fmt!r}")
    if not fmt.kind or not isinstance(fmt.kind, str):
        raise ValueError(f"{type(fmt).__name__}.kind must be a non-empty string")
    taken = _BY_KIND.get(fmt.kind)
    if taken is not None and type(taken) is not type(fmt) and not replace:
        raise ValueError(
            f"a layer format named {fmt.kind!r} is already registered ({type(taken).__name__}); "
            "pass replace=True to override it"
        )
    _BY_KIND[fmt.kind] = fmt
    return fmt


def get_format(kind: str) -> LayerFormat:
    """The format saved as ``kind``; a ValueError listing the known kinds otherwise."""
    try:
        return _BY_KIND[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown layer kind {kind!r} (known: {', '.join(format_kinds())})") from None


def format_kinds() -> tuple[str, ...]:
    return tuple(_BY_KIND)


def format_for_module(module: nn.Module) -> LayerFormat | None:
    """The format of a quantized module (exact type), or None for any other module."""
    for fmt in _BY_KIND.values():
        if type(module) is fmt.module_type:
            return fmt
    return None


def format_for_state(tensors: Mapping[str, torch.Tensor]) -> tuple[LayerFormat, dict[str, Any]] | None:
    """The format and params of a state_dict layer (keys without the prefix, e.g. ``weight``,
    ``weight_scale``), or None when no format recognises it."""
    for fmt in _BY_KIND.values():
        params = fmt.params_from_state(fmt.to_module_names(tensors))
        if params is not None:
            return fmt, params
    return None


def format_for_float_module(tensors: Mapping[str, torch.Tensor],
                            module: nn.Module) -> tuple[LayerFormat, dict[str, Any]] | None:
    """The format (and params) that reads a state_dict layer's tensors (keys without the
    prefix) AND replaces float ``module``'s type, or None: a file made from a state_dict
    records a layer by its tensors alone, which an INT8 Linear and an INT8 embedding table
    share; the model being loaded says which one it is."""
    for fmt in _BY_KIND.values():
        if type(module) in fmt.float_types:
            params = fmt.params_from_state(fmt.to_module_names(tensors))
            if params is not None:
                return fmt, params
    return None


def format_for_layer_of(fmt: LayerFormat, params: Mapping[str, Any],
                        module: nn.Module) -> tuple[LayerFormat, dict[str, Any]] | None:
    """``format_for_float_module`` from a layer's record alone (``fmt`` and ``params``: the
    tensors' dtypes and shapes are what the formats look at, so meta tensors stand in).

    >>> format_for_layer_of(get_format("int8_linear"), params, nn.Embedding(10, 4))[0].kind
    'int8_embedding'
    """
    tensors = {fmt.state_key(name): torch.empty(spec.shape, dtype=spec.dtypes[0], device="meta")
               for name, spec in fmt.expected_tensors(params).items()}
    return format_for_float_module(tensors, module)
