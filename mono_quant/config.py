"""``QuantizationConfig``: every quantization option in one frozen, validated record.

Options come from three places, highest priority first: keyword arguments, a config file
(``mono_quant.toml`` or ``[tool.mono_quant]`` in ``pyproject.toml``), the defaults below.
``QuantizationConfig.from_sources`` merges them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._config_file import find_config_file, read_config_file
from ._layer_options import normalize_filter_fn, normalize_layer_config

DTYPES = ("int8", "int4", "fp16")
GROUP_SIZES = (32, 64, 128, 256)
SCALE_METHODS = ("absmax", "mse")
ON_FAILURE = ("error", "warn", "ignore")

_DTYPE_ALIASES: dict[Any, str] = {
    "int8": "int8",
    "qint8": "int8",
    "int4": "int4",
    "quint4x2": "int4",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    torch.qint8: "int8",
    torch.int8: "int8",
    torch.float16: "fp16",
    torch.quint4x2: "int4",
}

TypeSpec = type | str


@dataclass(frozen=True)
class QuantizationConfig:
    """All options of a quantization run, validated on creation.

    dtype:                  "int8", "int4" or "fp16" (aliases: "float16", torch.qint8,
                            torch.int8, torch.float16, torch.quint4x2).
    symmetric:              symmetric (int8, zero point 0) or asymmetric (uint8 + zero point;
                            int4: a zero point per group). None (default): the format's own
                            default, symmetric for int8 and asymmetric for int4 (on MiniLM-L6
                            asymmetric int4 keeps +0.007 embedding cosine at every group size
                            for the same bytes; docs/int4.md).
    per_channel:            one scale per output channel (True) or one per tensor (False).
    group_size:             int4 group size along the input dimension: 32, 64, 128 or 256.
    scale_method:           how int4 picks each group's scale: "mse" (default: also tries three
                            smaller scales and keeps the one with the least squared error;
                            about +1.2 dB at g128 for ~3x the time) or "absmax" (the range).
    modules_to_not_convert: names or fnmatch patterns of modules kept in float; as in HF
                            transformers an entry matches a module whose qualified name equals
                            it, ends with "." + entry, or lies under it (e.g. "encoder").
    layer_types:            convert only these types (classes or class names); () = all.
    skip_types:             never convert these types.
    layer_names:            convert only modules matching these names/patterns; () = all.
    skip_names:             never convert modules matching these names/patterns.
    min_params:             modules with fewer parameters stay float.
    filter_fn:              ``filter_fn(name, module) -> bool``: convert only the layers it returns
                            True for (``module`` is None for state_dicts and checkpoints); in a
                            config file, the import path of such a function ("pkg.rules:keep").
    layer_config:           per-layer overrides, ``{pattern: dtype or {option: value}}``: a layer
                            whose name matches a pattern (as in modules_to_not_convert; the first
                            pattern that matches wins) uses those options instead of the run's,
                            e.g. ``{"lm_head": "int8", "*.attention.*": {"group_size": 32}}``.
                            Options: dtype ("int8", "int4"), symmetric, per_channel, group_size,
                            scale_method. A pattern that matches no layer is a warning.
    quantize_embeddings:    also quantize nn.Embedding and nn.EmbeddingBag tables (exactly those
                            types; in a state_dict, 2-D weights whose layer name contains
                            "embed") as INT8 per row, asymmetric unless ``symmetric`` is set,
                            whatever the run's dtype (int8 or int4). Off by default. Tables tied
                            to another layer (a language-model head sharing the weight) stay
                            float, as do tables with max_norm, sparse or scale_grad_by_freq.
    compute_sqnr:           measure each converted weight's SQNR (dB) for the report.
    validate:               run ``mono_quant.validate``'s checks (SQNR, size, save + load,
                            value ranges) at the end of ``dynamic_quantize``.
    on_failure:             what a failed check does: "error" (raise ValidationError),
                            "warn" (a warning, also in info.warnings) or "ignore".

    Static quantization only (``static_quantize`` / ``calibrate``):
    observer:               how calibration picks each layer's input range: "minmax",
                            "moving_average", "percentile", "mse" or a name registered with
                            ``register_observer`` (see ``mono_quant.observers``).
    num_samples:            calibration samples (batch rows) to run, at least 1.
    percentile:             the "percentile" observer's upper percentile, > 50 and <= 100.
    momentum:               the "moving_average" observer's weight of each new batch, in (0, 1].
    activation_symmetric:   quantize layer inputs as int8 with zero point 0 (True) or as
                            uint8 with a calibrated zero point (False).

    GPTQ and mixed precision only (``gptq_quantize``; ``num_samples`` calibration rows too):
    damp:                   added to the Hessian's diagonal, as a fraction of its mean (0.01);
                            retried x10 (up to 4 times) when the factorisation fails.
    act_order:              quantize columns by decreasing Hessian diagonal (most active inputs
                            first); groups stay the layer's own ("static groups").
    sequential:             calibrate each layer on the outputs of the layers before it already
                            quantized (True) or of the float model (False: one pass).
    max_bits_per_weight:    a budget in stored bits per weight (scales and zero points counted):
                            each layer stays INT4 at group_size or takes finer INT4 groups or
                            INT8, the least estimated loss of the model output within the
                            budget (docs/int4.md). None: all INT4 at group_size.
    sensitivity_samples:    calibration rows used to measure each layer's sensitivity (model
                            output error with that layer alone quantized), at least 1.

    >>> cfg = QuantizationConfig(dtype=torch.qint8, skip_names=["lm_head"])
    >>> cfg.dtype, cfg.skip_names
    ('int8', ('lm_head',))
    """

    dtype: str = "int8"
    symmetric: bool | None = None
    per_channel: bool = True
    group_size: int = 128
    scale_method: str = "mse"
    modules_to_not_convert: tuple[str, ...] = ()
    layer_types: tuple[TypeSpec, ...] = ()
    skip_types: tuple[TypeSpec, ...] = ()
    layer_names: tuple[str, ...] = ()
    skip_names: tuple[str, ...] = ()
    min_params: int = 512
    filter_fn: Callable[[str, nn.Module | None], bool] | None = None
    layer_config: Mapping[str, Any] = field(default_factory=dict)
    quantize_embeddings: bool = False
    compute_sqnr: bool = True
    validate: bool = True
    on_failure: str = "warn"
    # ---- static quantization (static_quantize / calibrate) ----
    observer: str = "minmax"
    num_samples: int = 150
    percentile: float = 99.99
    momentum: float = 0.1
    activation_symmetric: bool = False
    # ---- GPTQ and mixed precision (gptq_quantize) ----
    damp: float = 0.01
    act_order: bool = True
    sequential: bool = False
    max_bits_per_weight: float | None = None
    sensitivity_samples: int = 32

    def __post_init__(self) -> None:
        _set = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        _set("dtype", normalize_dtype(self.dtype))
        # None = the format's default; remembered, so that changing dtype later (from_sources)
        # picks the new format's default instead of the old one's
        object.__setattr__(self, "_symmetric_given", self.symmetric is not None)
        if self.symmetric is None:
            _set("symmetric", default_symmetric(self.dtype))
        for name in ("symmetric", "per_channel", "quantize_embeddings", "compute_sqnr", "validate"):
            _check_bool(name, getattr(self, name))
        if self.quantize_embeddings and self.dtype == "fp16":
            raise ValueError("quantize_embeddings=True makes embedding tables INT8 next to int8 or int4 layers; "
                             "dtype='fp16' already stores every table in float16: drop one of the two")
        _check_choice("on_failure", self.on_failure, ON_FAILURE)
        _check_choice("group_size", self.group_size, GROUP_SIZES, integer=True)
        _check_choice("scale_method", self.scale_method, SCALE_METHODS)
        if isinstance(self.min_params, bool) or not isinstance(self.min_params, int) or self.min_params < 0:
            raise ValueError(f"min_params must be an integer >= 0; got {self.min_params!r}")
        for name in ("modules_to_not_convert", "layer_names", "skip_names"):
            _set(name, _names_tuple(name, getattr(self, name)))
        for name in ("layer_types", "skip_types"):
            _set(name, _types_tuple(name, getattr(self, name)))
        _set("filter_fn", normalize_filter_fn(self.filter_fn))
        _set("layer_config", normalize_layer_config(self))
        _check_static_options(self, _set)
        _check_gptq_options(self, _set)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option name, in declaration order.

        >>> QuantizationConfig.option_names()[:2]
        ('dtype', 'symmetric')
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_sources(
        cls,
        config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> QuantizationConfig:
        """Merge keyword overrides over ``config`` over the defaults.

        ``config`` may be a ``QuantizationConfig``, a dict of options, or the path of a TOML
        file. When it is None, ``./mono_quant.toml`` or ``[tool.mono_quant]`` of
        ``./pyproject.toml`` is used if present. Overrides whose value is None are ignored.

        >>> cfg = QuantizationConfig.from_sources("mono_quant.toml", min_params=0)
        >>> cfg.min_params
        0
        """
        overrides = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(overrides) - set(cls.option_names()))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(cls.option_names())}"
            )
        base = cls._base(config)
        if overrides and "symmetric" not in overrides and not base.symmetric_given:
            overrides["symmetric"] = None  # the default of the (possibly new) dtype
        return dataclasses.replace(base, **overrides) if overrides else base

    @property
    def symmetric_given(self) -> bool:
        """False when ``symmetric`` is the dtype's default (it was not set anywhere).

        >>> QuantizationConfig(dtype="int4").symmetric, QuantizationConfig(dtype="int4").symmetric_given
        (False, False)
        """
        return bool(getattr(self, "_symmetric_given", True))

    @classmethod
    def _base(cls, config: Any) -> QuantizationConfig:
        if isinstance(config, QuantizationConfig):
            return config
        if isinstance(config, Mapping):
            return cls._from_mapping(config, "the config dict")
        if isinstance(config, (str, os.PathLike)):
            return cls._from_mapping(read_config_file(config), str(config))
        if config is None:
            found = find_config_file()
            return cls() if found is None else cls._from_mapping(read_config_file(found), str(found))
        raise TypeError(
            "config must be a QuantizationConfig, a dict of options or the path of a TOML file; "
            f"got {type(config).__name__}"
        )

    @classmethod
    def _from_mapping(cls, values: Mapping[str, Any], source: str) -> QuantizationConfig:
        unknown = sorted(set(values) - set(cls.option_names()))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; "
                f"valid keys: {', '.join(cls.option_names())}"
            )
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"in {source}: {exc}") from None


def valid_dtypes() -> tuple[str, ...]:
    """Built-in dtype names plus the names of schemes registered by users.

    >>> valid_dtypes()[:3]
    ('int8', 'int4', 'fp16')
    """
    from .schemes.registry import scheme_names  # late: the schemes import this module

    return DTYPES + tuple(name for name in scheme_names() if name not in DTYPES)


def default_symmetric(dtype: str) -> bool:
    """The ``symmetric`` a dtype gets when none is given: False for int4 (asymmetric groups keep
    more accuracy for the same bytes), True otherwise.

    >>> default_symmetric("int4"), default_symmetric("int8")
    (False, True)
    """
    return dtype != "int4"


def normalize_dtype(dtype: Any) -> str:
    """The canonical name of a dtype given as a string alias or a torch dtype.

    >>> normalize_dtype(torch.qint8), normalize_dtype("float16")
    ('int8', 'fp16')
    """
    key = dtype.lower() if isinstance(dtype, str) else dtype
    try:
        if key in _DTYPE_ALIASES:
            return _DTYPE_ALIASES[key]
    except TypeError:  # unhashable
        pass
    if isinstance(key, str) and key in valid_dtypes():
        return key
    raise ValueError(f"dtype must be one of {_quoted(valid_dtypes())}; got {dtype!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple, integer: bool = False) -> None:
    bad_type = integer and (isinstance(value, bool) or not isinstance(value, int))
    if bad_type or value not in choices:
        shown = ", ".join(map(str, choices)) if integer else _quoted(choices)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")


def _quoted(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def _names_tuple(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    try:
        items = tuple(items)
    except TypeError:
        raise ValueError(f"{name} must be a list of module names or patterns; got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} must contain non-empty strings (names or patterns); got {item!r}")
    return items


def _types_tuple(name: str, value: Any) -> tuple[TypeSpec, ...]:
    items = (value,) if isinstance(value, (str, type)) else value
    try:
        items = tuple(items)
    except TypeError:
        raise ValueError(f"{name} must be a list of module classes or class names; got {value!r}") from None
    for item in items:
        is_module_class = isinstance(item, type) and issubclass(item, nn.Module)
        if not is_module_class and not (isinstance(item, str) and item):
            raise ValueError(
                f"{name} must contain nn.Module subclasses or class names such as 'Linear'; got {item!r}"
            )
    return items


# ---- static quantization options ----------------------------------------------------------------


def _check_static_options(config: QuantizationConfig, set_field) -> None:
    """Validate (and normalise the observer name of) the static quantization fields."""
    from .observers import normalize_observer_name  # late: observers import this module

    set_field("observer", normalize_observer_name(config.observer))
    _check_bool("activation_symmetric", config.activation_symmetric)
    samples = config.num_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {samples!r}")
    if not _is_number(config.percentile) or not 50.0 < config.percentile <= 100.0:
        raise ValueError(f"percentile must be a number > 50 and <= 100 (e.g. 99.99); got {config.percentile!r}")
    if not _is_number(config.momentum) or not 0.0 < config.momentum <= 1.0:
        raise ValueError(f"momentum must be a number > 0 and <= 1 (e.g. 0.1); got {config.momentum!r}")
    set_field("percentile", float(config.percentile))
    set_field("momentum", float(config.momentum))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# ---- GPTQ and mixed precision options -----------------------------------------------------------


def _check_gptq_options(config: QuantizationConfig, set_field) -> None:
    """Validate the gptq_quantize fields (numbers become floats)."""
    for name in ("act_order", "sequential"):
        _check_bool(name, getattr(config, name))
    if not _is_number(config.damp) or not 0.0 <= config.damp <= 1.0:
        raise ValueError(f"damp must be a number from 0 to 1 (a fraction of the Hessian's mean diagonal, "
                         f"e.g. 0.01); got {config.damp!r}")
    set_field("damp", float(config.damp))
    budget = config.max_bits_per_weight
    if budget is not None:
        if not _is_number(budget) or not 1.0 <= budget <= 32.0 or budget == float("inf"):
            raise ValueError(f"max_bits_per_weight must be None or a number of bits from 1 to 32 "
                             f"(e.g. 4.6); got {budget!r}")
        set_field("max_bits_per_weight", float(budget))
    samples = config.sensitivity_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sensitivity_samples must be an integer >= 1; got {samples!r}")
