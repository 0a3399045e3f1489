"""``ReadOnlyTensor``: a tensor computed from a module's storage, which refuses writes.

The packed Linear modules hold their weight once, in the kernel's layout (``packed``); their
``qweight`` / ``scale`` / ``zero_point`` are computed from it on access. A write to such a copy
would change nothing the module computes with, so instead of being lost it raises, and the
message says how to change the weights. Reads (arithmetic, ``.float()``, indexing, comparison)
return plain tensors; views of the copy (``.data``, ``t[0]``, ``.view``) stay read-only, and
``.numpy()`` gives a read-only array.

>>> layer.scale.mul_(2)
RuntimeError: QuantizedLinear.scale is computed from the packed weight ...
"""

from __future__ import annotations

from typing import Any

import torch

_INPLACE_DUNDERS = frozenset(
    f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
                            "lshift", "rshift", "matmul")
) | {"__setitem__", "__set__", "__delitem__"}
# Methods whose names end in "_" but change no values.
_HARMLESS = frozenset({"requires_grad_", "share_memory_", "retain_grad"})


class ReadOnlyTensor(torch.Tensor):
    """A plain tensor's values, with every in-place write refused (see the module docstring)."""

    _read_only_message: str

    @staticmethod
    def wrap(tensor: torch.Tensor, message: str) -> ReadOnlyTensor:
        """``tensor`` (not copied) as a ReadOnlyTensor whose writes raise ``message``."""
        out = tensor.as_subclass(ReadOnlyTensor)
        out._read_only_message = message
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206 (torch protocol)
        kwargs = kwargs or {}
        target = args[0] if args and isinstance(args[0], ReadOnlyTensor) else _first_read_only(kwargs.get("out"))
        if target is not None and (_is_write(func) or "out" in kwargs):
            raise RuntimeError(target._read_only_message)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            if func is torch.Tensor.numpy or getattr(func, "__name__", "") == "__array__":
                out.flags.writeable = False
                return out
            return _keep_views_read_only(out, _first_read_only(args))

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickled or deep-copied, it is an ordinary tensor: the copy belongs to nobody.
        return torch.Tensor.__reduce_ex__(self.as_subclass(torch.Tensor), protocol)

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).clone()


def _is_write(func) -> bool:  # noqa: ANN001
    name = getattr(func, "__name__", "")
    if name in _INPLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.endswith("__") and name not in _HARMLESS


def _first_read_only(values) -> ReadOnlyTensor | None:  # noqa: ANN001
    if isinstance(values, ReadOnlyTensor):
        return values
    if isinstance(values, (tuple, list)):
        for v in values:
            if isinstance(v, ReadOnlyTensor):
                return v
    return None


def _keep_views_read_only(out: Any, source: ReadOnlyTensor | None) -> Any:
    """Results sharing the read-only tensor's memory stay read-only; new tensors are plain."""
    if source is None or not isinstance(out, torch.Tensor) or out.device.type == "meta":
        return out
    if out.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
        return out
    return ReadOnlyTensor.wrap(out.as_subclass(torch.Tensor), source._read_only_message)
