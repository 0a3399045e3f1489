"""The CPU fast path shared by ``QuantizedLinear`` and ``QuantizedLinearInt4``.

The saved buffers (``qweight``, ``scale``, ``zero_point``) stay in the canonical layout. The
C kernel wants them repacked into 16-row tiles (``_kernels.pack_linear_*``); that copy is
made on the first CPU forward and kept as a plain attribute, never a buffer, so it is not
in ``state_dict()``, not saved, and not carried by ``copy.deepcopy`` or pickling. It is
rebuilt whenever a buffer is replaced or changed in place (``load_state_dict``,
``load_quantized``, ``.to()``), which the cache key detects: the buffer objects themselves
(held weakly) and their version counters, which every in-place change bumps.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .. import _kernels

_BUFFERS = ("qweight", "scale", "zero_point", "bias")


class PackedForwardMixin:
    """Runs ``forward`` through the C kernel when it can, else through torch.

    The C kernel is used when ``x`` and the weight are on the CPU, ``x`` is float32, float16
    or bfloat16, the C extension is built, the backend is not ``"reference"``, and no
    gradient is needed for ``x``. Otherwise (CUDA, autograd, other dtypes) the module
    dequantizes the weight and calls ``F.linear``.

    >>> layer.uses_fast_path(torch.randn(1, layer.in_features))
    True
    """

    qweight: torch.Tensor
    _buffers: dict[str, torch.Tensor | None]
    _packed_cache: tuple[tuple[Any, ...], tuple[int, ...], _kernels.LinearPlan] | None = None

    def _plan_args(self) -> tuple[torch.Tensor, int]:  # pragma: no cover (each module implements it)
        """The packed weight and the group size (0 for INT8) of a new plan."""
        raise NotImplementedError

    def uses_fast_path(self, x: torch.Tensor) -> bool:
        """True when ``forward(x)`` runs the C kernel rather than dequantize + ``F.linear``.

        >>> layer.uses_fast_path(torch.randn(2, layer.in_features, requires_grad=True))
        False
        """
        return (
            x.device.type == "cpu"
            and self.qweight.device.type == "cpu"
            and x.dtype in _kernels.C_FLOAT_DTYPES
            and _kernels.linear_c_enabled()
            and not (x.requires_grad and torch.is_grad_enabled())
        )

    def _plan(self) -> _kernels.LinearPlan:
        buffers = self._buffers
        tensors = tuple(buffers.get(name) for name in _BUFFERS)
        versions = tuple(-1 if t is None else t._version for t in tensors)
        cache = self._packed_cache
        if (cache is not None and cache[1] == versions
                and all((r is None and t is None) or (r is not None and r() is t)
                        for r, t in zip(cache[0], tensors))):
            return cache[2]
        packed, group_size = self._plan_args()
        plan = _kernels.LinearPlan(packed, self.out_features, self.in_features, group_size,  # type: ignore[attr-defined]
                                   tensors[3])
        refs = tuple(None if t is None else weakref.ref(t) for t in tensors)
        object.__setattr__(self, "_packed_cache", (refs, versions, plan))
        return plan

    def packed_weight(self) -> torch.Tensor:
        """The weight repacked for the C kernel (built on first use, then cached).

        >>> layer.packed_weight().dtype
        torch.uint8
        """
        return self._plan().packed

    def packed_bytes(self) -> int:
        """Bytes of the in-memory repacked copy (0 until the first CPU forward).

        >>> layer(torch.randn(1, layer.in_features)); layer.packed_bytes() > 0
        True
        """
        cache = self._packed_cache
        return 0 if cache is None else cache[2].packed.numel()

    def release_packed(self) -> None:
        """Drop the repacked copy (the next CPU forward rebuilds it)."""
        object.__setattr__(self, "_packed_cache", None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # type: ignore[attr-defined]
        state.pop("_packed_cache", None)
        return state
