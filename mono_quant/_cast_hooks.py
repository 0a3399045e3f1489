"""The dtype boundary of an fp16 model: it takes and returns the original model's dtypes.

``dynamic_quantize(model, "fp16")`` stores the weights in float16 and computes in float16, as
``model.half()`` does, but unlike ``model.half()`` the result keeps the original's interface
(as torch's dynamic float16 quantization does): floating inputs of any dtype are cast to
float16 on the way in, floating outputs to the original's dtype on the way out. A layer that
kept its dtype (user rules, values beyond float16's range, NaN) casts its inputs to its own
dtype and its outputs back to the float16 around it, so every layer works whatever the input.

Values beyond float16's range (|x| > 65504) become inf in a float16 model, as in
``model.half()``. Where a cast here narrows (float32 -> float16) and makes a finite value inf,
a RuntimeWarning names the place: the original computes those values, the float16 model
cannot.

Done with forward hooks, not wrappers: module types, names and state_dict keys stay those of
the original (so saving, loading and tied weights are unaffected). ``load_quantized`` adds the
same hooks to a model loaded from an fp16 file.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

__all__ = ["add_cast_hooks", "model_float_dtype", "remove_cast_hooks"]


def cast_floats(obj: Any, dtype: torch.dtype, where: str = "") -> Any:
    """``obj`` with every floating tensor in it (also inside tuples, lists and dicts) cast to
    ``dtype``; ``obj`` itself when nothing changes. Other values pass as they are. A cast that
    turns finite values into inf warns, naming ``where``."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point() or obj.dtype == dtype:
            return obj
        out = obj.to(dtype)
        if torch.finfo(dtype).max < torch.finfo(obj.dtype).max:
            _warn_if_overflowed(obj, out, where)
        return out
    if isinstance(obj, (tuple, list)):
        items = [cast_floats(v, dtype, where) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if type(obj) is list:
            return items
        if type(obj) is tuple:
            return tuple(items)
        if hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*items)
        return obj  # another sequence type: left alone rather than rebuilt wrongly
    if isinstance(obj, dict):
        changed = {k: c for k, v in obj.items() if (c := cast_floats(v, dtype, where)) is not v}
        if not changed:
            return obj
        new = copy.copy(obj)  # keeps the mapping's type (OrderedDict, a model output class)
        for k, v in changed.items():
            new[k] = v
        return new
    return obj


def _warn_if_overflowed(before: torch.Tensor, after: torch.Tensor, where: str) -> None:
    # one reduction in the usual case (nothing is inf); the count only when something is
    if bool(torch.isinf(after).any()) and int(torch.isinf(after).sum()) > int(torch.isinf(before).sum()):
        limit = torch.finfo(after.dtype).max
        warnings.warn(
            f"{where} has values beyond {str(after.dtype).removeprefix('torch.')}'s range (|x| > {limit:g}) "
            "that became inf in this float16 model; the original computes them. Keep the layers they "
            "reach in float (modules_to_not_convert) or quantize with dtype='int8'",
            RuntimeWarning,
            stacklevel=2,
        )


class CastInputs:
    """Forward pre-hook: the module's floating tensor arguments -> ``dtype``."""

    def __init__(self, dtype: torch.dtype, name: str = "") -> None:
        self.dtype, self.name = dtype, name

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        where = f"the input of {_describe(module, self.name)}"
        return cast_floats(args, self.dtype, where), cast_floats(kwargs, self.dtype, where)

    def __repr__(self) -> str:
        return f"CastInputs({self.dtype})"


class CastOutputs:
    """Forward hook: the module's floating tensor outputs -> ``dtype``."""

    def __init__(self, dtype: torch.dtype, name: str = "") -> None:
        self.dtype, self.name = dtype, name

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return cast_floats(output, self.dtype, f"the output of {_describe(module, self.name)}")

    def __repr__(self) -> str:
        return f"CastOutputs({self.dtype})"


def _describe(module: nn.Module, name: str) -> str:
    return f"{type(module).__name__} {name!r}" if name else f"the model ({type(module).__name__})"


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype holding most elements of ``model`` (each tensor once), float32
    when it has none: the dtype its callers feed it.

    >>> model_float_dtype(nn.Linear(4, 4).bfloat16())
    torch.bfloat16
    """
    counts: Counter[torch.dtype] = Counter()
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            counts[t.dtype] += t.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _own_dtype(module: nn.Module) -> torch.dtype | None:
    for t in [*module._parameters.values(), *module._buffers.values()]:
        if t is not None and t.is_floating_point():
            return t.dtype
    return None


def _hook(module: nn.Module, name: str, inside: torch.dtype, outside: torch.dtype) -> None:
    module.register_forward_pre_hook(CastInputs(inside, name), with_kwargs=True)
    module.register_forward_hook(CastOutputs(outside, name))


def add_cast_hooks(model: nn.Module, compute: torch.dtype, interface: torch.dtype) -> None:
    """Give ``model`` (cast to ``compute``, some layers perhaps left in their dtype) the
    interface of its original: the root casts floating inputs to ``compute`` and floating
    outputs to ``interface``; a module whose own tensors have another dtype than the code
    around it casts at its boundary too. Earlier hooks of this kind are replaced. Nothing is
    added when no tensor of the model has the ``compute`` dtype.

    >>> add_cast_hooks(half_model, torch.float16, torch.float32)
    >>> half_model(torch.randn(2, 64)).dtype
    torch.float32
    """
    remove_cast_hooks(model)
    if not any(t.dtype == compute for t in [*model.parameters(), *model.buffers()]):
        return
    root_dtype = _own_dtype(model) or compute
    _hook(model, "", root_dtype, interface)
    seen = {id(model)}
    stack = [("", model, root_dtype)]
    while stack:
        prefix, parent, around = stack.pop()
        for attr, child in parent.named_children():
            if id(child) in seen:
                continue  # a shared module: hooked (or not) where it first appears
            seen.add(id(child))
            name = f"{prefix}.{attr}" if prefix else attr
            own = _own_dtype(child)
            if own is not None and own != around:
                _hook(child, name, own, around)
            stack.append((name, child, own or around))


def remove_cast_hooks(model: nn.Module) -> None:
    """Remove the hooks ``add_cast_hooks`` added, from ``model`` and every submodule."""
    for module in model.modules():
        for hooks, kind in ((module._forward_pre_hooks, CastInputs), (module._forward_hooks, CastOutputs)):
            for key in [k for k, h in hooks.items() if isinstance(h, kind)]:
                del hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
