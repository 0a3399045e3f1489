"""Values for the non-persistent buffers of a meta-device skeleton, which files never hold.

A model built under ``torch.device("meta")`` (or accelerate's ``init_empty_weights()``) has
its non-persistent buffers (transformers' ``position_ids``, ``token_type_ids``, rotary
``inv_freq``, ...) on the meta device too, and ``state_dict()`` leaves them out, so no file
can fill them. They come from, in this order:

1. ``buffers_from``: a model of the same architecture built on the CPU (only its buffers are
   read) or a ``{name: tensor}`` mapping;
2. the model's own initialisation: a transformers model (anything with ``_init_weights``, the
   nearest such module above the buffer) re-initialises the buffer's module, on a copy of that
   module whose buffers start as a sentinel (NaN, or the dtype's minimum for integers) so that
   a buffer the initialisation does not set is noticed instead of loaded as garbage;
3. else a ValueError that names the buffer and says what to pass.

Nothing here changes the model: the values are returned, ``_skeleton`` assigns them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .state_dict import join_key, split_key

BufferValues = list[tuple[nn.Module, str, torch.Tensor]]  # owner, attribute, value


def meta_buffers(model: nn.Module, skip: set[int]) -> list[str]:
    """Names of the non-persistent buffers still on the meta device (modules in ``skip``,
    by id, are replaced by the file and do not count)."""
    out = []
    for name, module in model.named_modules():
        if id(module) in skip:
            continue
        for attr, tensor in module._buffers.items():  # registration order (the set's order is random)
            if attr in module._non_persistent_buffers_set and tensor is not None and tensor.is_meta:
                out.append(join_key(name, attr))
    return out


def buffer_values(model: nn.Module, names: list[str], buffers_from: nn.Module | Mapping | None) -> BufferValues:
    """A CPU value for each meta buffer in ``names`` (see the module docstring), or a
    ValueError for the first that has none."""
    given = _given(buffers_from)
    values: BufferValues = []
    by_owner: dict[str, list[str]] = {}
    for name in names:
        prefix, attr = split_key(name)
        current = model.get_submodule(prefix)._buffers[attr]
        if given is not None:
            values.append((model.get_submodule(prefix), attr, _from_given(name, current, given)))
        else:
            by_owner.setdefault(prefix, []).append(attr)
    for prefix, attrs in by_owner.items():
        owner = model.get_submodule(prefix)
        initialised = _reinitialised(model, prefix, owner, attrs)
        values.extend((owner, attr, initialised[attr]) for attr in attrs)
    return values


def _given(buffers_from) -> dict[str, torch.Tensor] | None:
    if buffers_from is None:
        return None
    if isinstance(buffers_from, nn.Module):
        return dict(buffers_from.named_buffers())
    if isinstance(buffers_from, Mapping):
        return dict(buffers_from)
    raise TypeError("buffers_from must be a model of the same architecture built on the CPU, or a dict of "
                    f"buffer name -> tensor; got {type(buffers_from).__name__}")


def _from_given(name: str, current: torch.Tensor, given: Mapping[str, torch.Tensor]) -> torch.Tensor:
    tensor = given.get(name)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"buffers_from has no tensor {name!r} (the skeleton's non-persistent buffer); pass a model "
                         "of the same architecture built on the CPU")
    if tensor.is_meta:
        raise ValueError(f"buffers_from's {name!r} is on the meta device too; build that model on the CPU")
    if tuple(tensor.shape) != tuple(current.shape) or tensor.dtype != current.dtype:
        raise ValueError(f"buffers_from's {name!r} is {tensor.dtype} {list(tensor.shape)} but the skeleton's is "
                         f"{current.dtype} {list(current.shape)}; pass a model of the same architecture and config")
    return tensor.detach().to("cpu").clone()


def _reinitialised(model: nn.Module, prefix: str, owner: nn.Module, attrs: list[str]) -> dict[str, torch.Tensor]:
    name = join_key(prefix, attrs[0])
    init = _init_function(model, prefix)
    if init is None:
        raise ValueError(
            f"{name!r} is on the meta device and files do not hold it (a non-persistent buffer); build the model "
            "on the CPU, or pass buffers_from= a model of the same architecture built on the CPU (or a dict "
            f"{{{name!r}: tensor}})"
        )
    twin = copy.deepcopy(owner)  # the skeleton's module stays as it is until every value is known
    for attr in attrs:
        twin._buffers[attr] = _sentinel(name, owner._buffers[attr])
    with torch.no_grad():
        init(twin)
    out = {}
    for attr in attrs:
        value = twin._buffers.get(attr)
        if value is None or value.is_meta or _holds_sentinel(value):
            raise ValueError(
                f"{join_key(prefix, attr)!r} is on the meta device and the model's _init_weights does not set it; "
                "pass buffers_from= a model of the same architecture built on the CPU, or build the model on the CPU"
            )
        out[attr] = value.detach()
    return out


def _init_function(model: nn.Module, prefix: str):
    """``_init_weights`` of the nearest module at or above ``prefix`` that has one (the
    transformers model the buffer belongs to), or None."""
    parts = prefix.split(".") if prefix else []
    for end in range(len(parts), -1, -1):
        module = model.get_submodule(".".join(parts[:end]))
        init = getattr(module, "_init_weights", None)
        if callable(init) and hasattr(module, "config"):
            return init
    return None


def _sentinel(name: str, meta: torch.Tensor) -> torch.Tensor:
    if meta.dtype.is_floating_point:
        return torch.full(meta.shape, float("nan"), dtype=meta.dtype)
    if meta.dtype == torch.bool or meta.is_complex():
        raise ValueError(f"{name!r} is a {meta.dtype} non-persistent buffer on the meta device; pass buffers_from= a "
                         "model of the same architecture built on the CPU, or build the model on the CPU")
    return torch.full(meta.shape, torch.iinfo(meta.dtype).min, dtype=meta.dtype)


def _holds_sentinel(value: torch.Tensor) -> bool:
    if value.dtype.is_floating_point:
        return bool(torch.isnan(value).any())
    return bool((value == torch.iinfo(value.dtype).min).any())
