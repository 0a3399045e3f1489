"""Filling a float model skeleton (CPU or meta device) with the contents of a checked file.

Two steps so that a bad file never leaves a half-loaded model: ``_plan`` matches every file
tensor and layer record against the skeleton and raises on the first mismatch; ``_apply``
then swaps modules and tensors. The file is the truth for values and dtypes, the skeleton
for structure (shapes, conv strides, ...); each must agree with the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ._file_metadata import FileMetadata, LayerEntry
from ._skeleton_buffers import BufferValues, buffer_values, meta_buffers
from .errors import CorruptFileError
from .formats import format_for_layer_of
from .state_dict import join_key, split_key

_SHOWN = 3


@dataclass
class _Plan:
    layers: list[tuple[nn.Module, LayerEntry, dict[str, torch.Tensor]]] = field(default_factory=list)
    plain: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # owner, attr, old, new
    buffers: BufferValues = field(default_factory=list)  # non-persistent buffers of a meta skeleton


def fill_skeleton(model: nn.Module, tensors: Mapping[str, torch.Tensor], meta: FileMetadata, path: str,
                  buffers_from=None) -> nn.Module:
    """Replace the quantized layers' modules and every other tensor of ``model`` in place;
    returns ``model`` (or the new root module when the root itself is a quantized layer).
    Non-persistent buffers left on the meta device get values (``_skeleton_buffers``)."""
    return _apply(model, _plan(model, tensors, meta, path, buffers_from))


def _plan(model: nn.Module, tensors: Mapping[str, torch.Tensor], meta: FileMetadata, path: str,
          buffers_from=None) -> _Plan:
    plan = _Plan()
    by_name = dict(model.named_modules(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, module in by_name.items():
        names_of.setdefault(id(module), []).append(name)
    consumed: set[str] = set()
    replaced = _plan_layers(by_name, names_of, tensors, meta, consumed, plan, path)
    replaced_names = {n for module_id in replaced for n in names_of[module_id]}
    _plan_plain(model, by_name, replaced_names, tensors, consumed, plan, path)
    unexpected = sorted(set(tensors) - consumed)
    if unexpected:
        raise CorruptFileError(path, f"unexpected tensor(s) {_listing(unexpected)}: the model has no such parameter "
                                     "or buffer; load into a model of the architecture that was saved")
    plan.buffers = buffer_values(model, meta_buffers(model, set(replaced)), buffers_from)
    _check_no_meta_left(model, replaced, plan)
    return plan


def _plan_layers(by_name, names_of, tensors, meta: FileMetadata, consumed: set[str], plan: _Plan, path) -> dict:
    """Match each quantized layer record with its float module; ``id(module) -> (entry, tensors)``."""
    replaced: dict[int, tuple[LayerEntry, dict[str, torch.Tensor]]] = {}
    for entry in meta.layers.values():
        if entry.fmt is None:
            continue  # cast layers are plain tensors with a checked dtype
        module = by_name.get(entry.name)
        where = f"layer {entry.name or '(root)'!r} ({entry.kind})"
        if module is None:
            raise CorruptFileError(path, f"{where} has no module of that name in the model; "
                                         "load into a model of the architecture that was saved")
        if type(module) not in entry.fmt.float_types and meta.layout == "state_dict":
            entry = as_layer_of(entry, module)
        if type(module) not in entry.fmt.float_types:
            wanted = " or ".join(t.__name__ for t in entry.fmt.float_types)
            raise CorruptFileError(path, f"{where} replaces a {wanted}, but the model has a "
                                         f"{type(module).__name__} there; load into a fresh float model")
        mismatch = entry.fmt.skeleton_mismatch(entry.params, module)
        if mismatch:
            raise CorruptFileError(path, f"{where}: {mismatch}")
        own = {n: tensors[meta.file_key(entry, n)] for n in entry.fmt.expected_tensors(entry.params)}
        first = replaced.get(id(module))
        if first is None:
            replaced[id(module)] = (entry, own)
            plan.layers.append((module, entry, own))
        elif first[0].kind != entry.kind or not _same_tensors(first[1], own):
            raise CorruptFileError(path, f"{where}: the model shares this module with layer {first[0].name!r}, "
                                         "but the file holds different values for the two")
        consumed.update(meta.file_key(entry, n) for n in own)
    # A module shared under several names is saved under each of them (as aliases).
    for module_id, (entry, own) in replaced.items():
        for other in names_of[module_id]:
            for name, tensor in own.items():
                key = join_key(other, entry.fmt.state_key(name) if meta.layout == "state_dict" else name)
                if key in tensors and key not in consumed:
                    if not _same_tensors({name: tensors[key]}, {name: tensor}):
                        raise CorruptFileError(path, f"tensor {key!r} differs from the same module's {name!r} "
                                                     f"under {entry.name!r}")
                    consumed.add(key)
    return replaced


def as_layer_of(entry: LayerEntry, module: nn.Module) -> LayerEntry:
    """A state_dict-made file records a layer by its tensors (an INT8 table reads as
    "int8_linear"): the entry as the format that reads the same tensors for ``module``'s type,
    or unchanged when none does.

    >>> as_layer_of(entry, nn.Embedding(10, 4)).kind
    'int8_embedding'
    """
    found = format_for_layer_of(entry.fmt, entry.params, module)
    if found is None:
        return entry
    return dataclasses.replace(entry, kind=found[0].kind, fmt=found[0], params=found[1])


def _plan_plain(model, by_name, replaced_names, tensors, consumed, plan: _Plan, path) -> None:
    """Every state_dict entry of the skeleton outside the replaced modules takes the file's tensor."""
    missing = []
    taken: dict[int, tuple[str, torch.Tensor]] = {}
    for key, current in model.state_dict(keep_vars=True).items():
        prefix, attr = split_key(key)
        if prefix in replaced_names:
            continue
        tensor = tensors.get(key)
        if tensor is None:
            missing.append(key)
            continue
        owner = by_name.get(prefix)
        if owner is None or (attr not in owner._parameters and attr not in owner._buffers):
            raise CorruptFileError(path, f"{key!r} is written by the model's own state_dict hook; mono_quant loads "
                                         "parameters and buffers only")
        if tuple(tensor.shape) != tuple(current.shape):
            raise CorruptFileError(path, f"tensor {key!r} has shape {list(tensor.shape)} but the model's is "
                                         f"{list(current.shape)}")
        if tensor.dtype != current.dtype and not (tensor.is_floating_point() and current.is_floating_point()):
            raise CorruptFileError(path, f"tensor {key!r} is {tensor.dtype} but the model's is {current.dtype}")
        earlier = taken.get(id(current))
        if earlier is not None and earlier[1] is not tensor and not _same_tensors({0: earlier[1]}, {0: tensor}):
            raise CorruptFileError(path, f"the model ties {earlier[0]!r} and {key!r}, but the file holds different "
                                         "values for them")
        taken.setdefault(id(current), (key, tensor))
        consumed.add(key)
        plan.plain.append((owner, attr, current, tensor))
    if missing:
        raise CorruptFileError(path, f"missing tensor(s) {_listing(missing)}: the model has them, the file does not")


def _check_no_meta_left(model: nn.Module, replaced: Mapping[int, object], plan: _Plan) -> None:
    filled = {(id(owner), attr) for owner, attr, _, _ in plan.plain}
    filled |= {(id(owner), attr) for owner, attr, _ in plan.buffers}
    for name, module in model.named_modules():
        if id(module) in replaced:
            continue
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None and tensor.is_meta and (id(module), attr) not in filled:
                raise ValueError(
                    f"{join_key(name, attr)!r} is on the meta device and files do not hold it (a non-persistent "
                    "buffer); build the model on the CPU, or give this buffer its values before loading"
                )


def _apply(model: nn.Module, plan: _Plan) -> nn.Module:
    holders: dict[int, list[tuple[dict, str]]] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attr, tensor in store.items():
                if tensor is not None:
                    holders.setdefault(id(tensor), []).append((store, attr))
    made: dict[int, torch.Tensor] = {}  # id(old) -> new; the plan keeps every old tensor alive
    for owner, attr, old, tensor in plan.plain:
        if id(old) in made:
            continue  # tied to a tensor already replaced, in every place that holds it
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(tensor, requires_grad=old.requires_grad and tensor.is_floating_point())
        else:
            new = tensor
        made[id(old)] = new
        for store, name in holders[id(old)]:
            store[name] = new
    for owner, attr, tensor in plan.buffers:
        owner._buffers[attr] = tensor  # stays non-persistent: the set of names is unchanged
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for attr, child in parent._modules.items():
            if child is not None:
                slots.setdefault(id(child), []).append((parent, attr))
    root = model
    for module, entry, own in plan.layers:
        new_module = entry.fmt.build(entry.params, module, own)
        for parent, attr in slots.get(id(module), []):
            parent._modules[attr] = new_module
        if module is model:
            root = new_module
    return root


def _same_tensors(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]))
        for k in a
    )


def _listing(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
