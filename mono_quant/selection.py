"""Which layers get converted: each rule returns the reason a layer is skipped, or None.

Rules, in the order they are asked (the first reason wins):
1. names:   modules_to_not_convert, skip_names, layer_names (see ``name_matches``), then the
            user's ``filter_fn(name, module)`` (``module`` is None for state_dict entries);
2. types:   skip_types, layer_types, the default float types (embeddings and norms), and the
            scheme's ``supported_types`` (matched exactly: subclasses may override forward);
3. tensors: empty weights, NaN/Inf values, fewer than ``min_params`` parameters, weights tied
            to another module;
4. the scheme's own ``skip_reason`` (shape limits of its format).
For a ``whole_model`` scheme (fp16) only the user's rules, NaN/Inf and the scheme's own
rule apply. A state_dict has no module types: a 2-D weight counts as "Linear" (or
"Embedding" when its name contains "embed") and a 4-D weight as "Conv2d"; there the scheme's
``skip_state_reason``, which says which entries it can take at all, comes right after the names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

from ._layers import own_tensors, state_kind
from .config import QuantizationConfig, TypeSpec
from .schemes.base import Scheme

DEFAULT_FLOAT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_TABLES = (nn.Embedding, nn.EmbeddingBag)


def name_matches(name: str, pattern: str) -> bool:
    """True when module ``name`` or one of its parents equals ``pattern``, ends with
    ``"." + pattern``, or matches it as an fnmatch pattern (``*``, ``?``, ``[...]``).

    >>> name_matches("model.decoder.lm_head", "lm_head"), name_matches("encoder.layer.0.q", "encoder")
    (True, True)
    """
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        path = ".".join(parts[:end])
        if path == pattern or path.endswith("." + pattern) or fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def type_matches(cls: type[nn.Module], spec: TypeSpec) -> bool:
    """True when ``cls`` is (a subclass of) ``spec``, a class or a class name such as
    ``"Linear"``, ``"torch.nn.Linear"`` or ``"torch.nn.modules.linear.Linear"``.

    >>> type_matches(nn.Linear, "Linear"), type_matches(nn.Conv2d, nn.Linear)
    (True, False)
    """
    if isinstance(spec, type):
        return issubclass(cls, spec)
    for klass in cls.__mro__:
        names = {klass.__name__, f"{klass.__module__}.{klass.__qualname__}"}
        if klass.__module__.startswith("torch.nn."):
            names |= {f"torch.nn.{klass.__name__}", f"nn.{klass.__name__}"}
        if spec in names:
            return True
    return False


def parameter_owners(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> the names of the distinct modules holding it directly (more than
    one = tied weights; one module reachable under two names counts once).

    >>> owners = parameter_owners(model)
    """
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return owners


def module_skip_reason(
    name: str, module: nn.Module, scheme: Scheme, owners: Mapping[int, list[str]] | None = None,
    *, check_values: bool = True,
) -> str | None:
    """Why ``module`` (called ``name`` in the model) stays as it is, or None to convert it.
    ``check_values=False`` leaves out the value rule (meta / NaN / Inf), for a module whose
    values arrive later (quantizing while transformers loads them; see ``values_reason``).

    >>> module_skip_reason("embed", nn.Embedding(10, 4), Int8Scheme(QuantizationConfig()))
    'Embedding stays float (embeddings and norms are not quantized by default)'
    """
    config = scheme.config
    return (
        _name_reason(name, config)
        or filter_reason(name, module, config)
        or _type_reason(type(module), config, scheme)
        or _tensor_reason(name, module, config, scheme.whole_model, owners or {}, check_values)
        or (scheme.skip_reason(name, module) if check_values or not scheme.whole_model else None)
    )


def state_skip_reason(prefix: str, tensors: Mapping[str, torch.Tensor], scheme: Scheme,
                      tied_to: str | None = None) -> str | None:
    """Why the state_dict entries of layer ``prefix`` stay as they are, or None to convert them.
    ``tied_to``: another layer whose weight is this one's (``tied_weights``).

    >>> state_skip_reason("fc", {"weight": torch.randn(4, 4)}, Int8Scheme(QuantizationConfig()))
    'has 16 parameters, fewer than min_params=512'
    """
    config = scheme.config
    if "weight_scale" in tensors or "weight_zero_point" in tensors:
        return "already quantized (has weight_scale / weight_zero_point)"
    return (
        _name_reason(prefix, config)
        or filter_reason(prefix, None, config)
        or scheme.skip_state_reason(prefix, tensors)
        or _state_type_reason(prefix, tensors, config, scheme.whole_model)
        or _state_tensor_reason(tensors, config, scheme.whole_model)
        or (_tied_reason(tied_to) if tied_to is not None and not scheme.whole_model else None)
    )


def tied_weights(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Layer prefix -> another layer whose ``weight`` entry is the same tensor memory (a state_dict
    of a model with tied weights holds one tensor under both names), for every such layer.

    >>> tied_weights({"embed.weight": w, "head.weight": w})
    {'embed': 'head', 'head': 'embed'}
    """
    holders: dict[tuple, list[str]] = {}
    for key, tensor in state.items():
        prefix, _, attr = key.rpartition(".")
        if attr == "weight" and isinstance(tensor, torch.Tensor) and tensor.numel() and not tensor.is_meta:
            where = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            holders.setdefault(where, []).append(prefix)
    return {p: next(o for o in group if o != p) for group in holders.values() if len(group) > 1 for p in group}


def _tied_reason(other: str) -> str:
    return f"its weight is shared with {other!r} (tied); converting it would untie them, so both stay float"


def _name_reason(name: str, config: QuantizationConfig) -> str | None:
    for pattern in config.modules_to_not_convert:
        if name_matches(name, pattern):
            return f"listed in modules_to_not_convert ({pattern!r})"
    for pattern in config.skip_names:
        if name_matches(name, pattern):
            return f"name matches skip_names ({pattern!r})"
    if config.layer_names and not any(name_matches(name, p) for p in config.layer_names):
        return f"name matches none of layer_names ({', '.join(map(repr, config.layer_names))})"
    return None


def filter_reason(name: str, module: nn.Module | None, config: QuantizationConfig) -> str | None:
    """"filter_fn returned False" when the user's ``filter_fn`` declines the layer, else None.

    >>> filter_reason("lm_head", nn.Linear(4, 4), QuantizationConfig(filter_fn=lambda n, m: n != "lm_head"))
    'filter_fn returned False'
    """
    if config.filter_fn is None:
        return None
    keep = config.filter_fn(name, module)
    if not isinstance(keep, bool):
        raise TypeError(f"filter_fn must return True or False; it returned {keep!r} for layer {name!r}")
    return None if keep else "filter_fn returned False"


def _type_reason(cls: type[nn.Module], config: QuantizationConfig, scheme: Scheme) -> str | None:
    for spec in config.skip_types:
        if type_matches(cls, spec):
            return f"type {cls.__name__} matches skip_types ({_spec_name(spec)})"
    chosen = any(type_matches(cls, spec) for spec in config.layer_types)
    if config.layer_types and not chosen:
        return f"type {cls.__name__} is not in layer_types ({', '.join(map(_spec_name, config.layer_types))})"
    if scheme.whole_model:
        return None
    converts_kind = any(issubclass(cls, t) for t in scheme.supported_types)
    if not chosen and issubclass(cls, DEFAULT_FLOAT_TYPES) and not converts_kind:
        hint = "; pass quantize_embeddings=True to make embeddings INT8" if issubclass(cls, _TABLES) else ""
        return f"{cls.__name__} stays float (embeddings and norms are not quantized by default{hint})"
    if cls not in scheme.supported_types:
        supported = ", ".join(t.__name__ for t in scheme.supported_types)
        parent = next((t for t in scheme.supported_types if issubclass(cls, t)), None)
        if parent is not None:
            return (
                f"{cls.__name__} subclasses {parent.__name__} and may change its behaviour; "
                f"the {scheme.name} scheme converts exactly: {supported}"
            )
        return f"{cls.__name__} is not supported by the {scheme.name} scheme (supported: {supported})"
    return None


def _tensor_reason(
    name: str, module: nn.Module, config: QuantizationConfig, whole_model: bool, owners: Mapping[int, list[str]],
    check_values: bool = True,
) -> str | None:
    tensors = own_tensors(module)
    reason = _values_reason(tensors, whole_model) if check_values else None
    if reason or whole_model:
        return reason
    params = list(module.parameters(recurse=False))
    count = sum(p.numel() for p in params)
    if count < config.min_params:
        return f"has {count} parameters, fewer than min_params={config.min_params}"
    for param in params:
        others = [o for o in owners.get(id(param), []) if o != name]
        if others:
            return _tied_reason(others[0])
    return None


def values_reason(tensors: Mapping[str, torch.Tensor], whole_model: bool = False) -> str | None:
    """Why a layer's tensors cannot be converted for their values (never loaded, empty, NaN
    or Inf), or None.

    >>> values_reason({"weight": torch.tensor([[float("nan")]])})
    "'weight' contains NaN or Inf; replace them (torch.nan_to_num) to convert this layer"
    """
    return _values_reason(tensors, whole_model)


def _values_reason(tensors: Mapping[str, torch.Tensor], whole_model: bool) -> str | None:
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        if tensor.is_meta:
            return f"'{key}' is on the meta device (its values were never loaded); load the weights first"
        if tensor.numel() == 0 and not whole_model:
            return f"'{key}' is empty (shape {tuple(tensor.shape)})"
        if not all_finite(tensor):
            return (
                f"'{key}' contains NaN or Inf; replace them (torch.nan_to_num) to convert this layer"
            )
    return None


_FINITE_CHUNK = 1 << 16  # elements


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or +-Inf. Checked 65536 elements at a time, because
    ``torch.isfinite`` of a whole weight allocates about 2.5 times its size in temporaries.

    >>> all_finite(torch.tensor([1.0, float("nan")]))
    False
    """
    flat = tensor.detach().reshape(-1)
    return all(bool(torch.isfinite(chunk).all()) for chunk in flat.split(_FINITE_CHUNK))


def _state_type_name(prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
    kind = state_kind(prefix, tensors)
    return kind.removesuffix("-like") if kind.endswith("-like") else None


def _state_type_reason(
    prefix: str, tensors: Mapping[str, torch.Tensor], config: QuantizationConfig, whole_model: bool
) -> str | None:
    kind = _state_type_name(prefix, tensors)
    names = {kind} if kind else set()
    for spec in config.skip_types:
        if _spec_name(spec).rsplit(".", 1)[-1] in names:
            return f"a {kind}-like weight, which matches skip_types ({_spec_name(spec)})"
    chosen = any(_spec_name(spec).rsplit(".", 1)[-1] in names for spec in config.layer_types)
    if config.layer_types and not chosen:
        what = f"a {kind}-like weight" if kind else "not a Linear- or Conv2d-like weight"
        return f"{what}, not in layer_types ({', '.join(map(_spec_name, config.layer_types))})"
    if kind == "Embedding" and not chosen and not whole_model and not config.quantize_embeddings:
        return (
            "its name says it is an embedding, and embeddings stay float; "
            "pass quantize_embeddings=True to make it INT8 per row"
        )
    return None


def _state_tensor_reason(
    tensors: Mapping[str, torch.Tensor], config: QuantizationConfig, whole_model: bool
) -> str | None:
    reason = _values_reason(tensors, whole_model)
    if reason or whole_model:
        return reason
    count = sum(tensors[k].numel() for k in ("weight", "bias") if k in tensors)
    if count < config.min_params:
        return f"has {count} parameters, fewer than min_params={config.min_params}"
    return None


def _spec_name(spec: TypeSpec) -> str:
    return spec.__name__ if isinstance(spec, type) else spec
