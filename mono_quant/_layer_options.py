"""Checking the per-layer options of ``QuantizationConfig``: ``filter_fn`` and ``layer_config``.

Kept apart from ``config.py`` because both need more than a type check: a filter given as
text (a config file cannot hold a function) is imported, and every ``layer_config`` entry is
validated by building the config it stands for, so a wrong override fails when the config is
made, naming its pattern, not halfway through a model.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import QuantizationConfig

# The options a layer_config entry may change: how one layer is quantized, not which layers are.
LAYER_OPTIONS = ("dtype", "symmetric", "per_channel", "group_size", "scale_method")


def normalize_filter_fn(value: Any) -> Callable | None:
    """``value`` itself when callable; a ``"package.module:function"`` string imported; None kept.

    >>> normalize_filter_fn("os.path:isabs")("/x", None)
    True
    """
    if value is None or callable(value):
        return value
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ValueError("filter_fn must be a function filter_fn(name, module) -> bool, or in a config file the "
                         f"import path of one as \"package.module:function\"; got {value!r}")
    module_name, attr = value.split(":")
    try:
        found = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"filter_fn {value!r} could not be imported ({type(exc).__name__}: {exc}); check the "
                         "module is importable from the working directory and defines the function") from None
    if not callable(found):
        raise ValueError(f"filter_fn {value!r} names a {type(found).__name__}, not a function")
    return found


class FrozenMapping(Mapping):
    """A read-only, hashable dict (the config is frozen and usable as a dict key); compares
    equal to a dict with the same items and prints like one."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._items == dict(other.items())

    def __repr__(self) -> str:
        return repr(self._items)


def normalize_layer_config(config: QuantizationConfig) -> FrozenMapping:
    """``config.layer_config`` as ``{pattern: {option: value}}`` (a dtype string becomes
    ``{"dtype": ...}``; option names may use ``-``), each entry checked by building its config.

    >>> normalize_layer_config(QuantizationConfig(dtype="int4", layer_config={"lm_head": "int8"}))
    {'lm_head': {'dtype': 'int8'}}
    """
    value = config.layer_config
    if not isinstance(value, Mapping):
        raise ValueError("layer_config must map layer names or patterns to a dtype or a dict of options, e.g. "
                         f"{{'lm_head': 'int8', '*.attention.*': {{'group_size': 32}}}}; got {value!r}")
    out: dict[str, FrozenMapping] = {}
    for pattern, overrides in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"layer_config keys must be non-empty layer names or patterns; got {pattern!r}")
        overrides = _overrides(pattern, overrides)
        out[pattern] = FrozenMapping({**overrides, **_checked(config, pattern, overrides)})
    if out:
        _check_not_whole_model(config.dtype, "the run's dtype")
    return FrozenMapping(out)


def layer_override(config: QuantizationConfig, overrides: Mapping[str, Any]) -> QuantizationConfig:
    """The config a layer with ``overrides`` (an entry of ``config.layer_config``) runs with.

    >>> layer_override(cfg, {"group_size": 32}).group_size
    32
    """
    overrides = dict(overrides)
    if "symmetric" not in overrides and not config.symmetric_given:
        overrides["symmetric"] = None  # the default of the layer's dtype (INT8 symmetric, INT4 asymmetric)
    return dataclasses.replace(config, layer_config=FrozenMapping(), **overrides)


def _overrides(pattern: str, overrides: Any) -> dict[str, Any]:
    if isinstance(overrides, str):
        return {"dtype": overrides}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"layer_config[{pattern!r}] must be a dtype such as 'int8' or a dict of options "
                         f"({', '.join(LAYER_OPTIONS)}); got {overrides!r}")
    out = {}
    for key, option in overrides.items():
        name = key.replace("-", "_") if isinstance(key, str) else key
        if name not in LAYER_OPTIONS:
            raise ValueError(f"layer_config[{pattern!r}] has the option {key!r}; a layer can override "
                             f"{', '.join(LAYER_OPTIONS)} (choose layers with the other options instead)")
        out[name] = option
    return out


def _checked(config: QuantizationConfig, pattern: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The normalized values of ``overrides`` (e.g. dtype aliases resolved), or a ValueError
    that names the pattern."""
    try:
        layer = layer_override(config, overrides)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer_config[{pattern!r}]: {exc}") from None
    if "dtype" in overrides:
        _check_not_whole_model(layer.dtype, f"layer_config[{pattern!r}]")
    return {name: getattr(layer, name) for name in overrides}


def _check_not_whole_model(dtype: str, where: str) -> None:
    from .schemes.registry import get_scheme  # late: the schemes import the config module

    if get_scheme(dtype).whole_model:
        raise ValueError(f"layer_config cannot be combined with dtype {dtype!r} ({where}): {dtype} converts the "
                         "whole model at once; use per-layer overrides with weight formats such as 'int8' and 'int4'")
