"""The CPU fast path shared by ``QuantizedLinear`` and ``QuantizedLinearInt4``.

The saved buffers (``qweight``, ``scale``, ``zero_point``) stay in the canonical layout. The
C kernel wants them repacked into 16-row tiles (``_kernels.pack_linear_*``); that copy is
made on the first CPU forward and kept as a plain attribute, never a buffer, so it is not
in ``state_dict()``, not saved, and not carried by ``copy.deepcopy`` or pickling. It is
rebuilt whenever a buffer is replaced or changed in place (``load_state_dict``,
``load_quantized``, ``.to()``), which the cache key (storage address and version counter of
each buffer) detects.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _kernels


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
    scale: torch.Tensor
    zero_point: torch.Tensor
    _packed_cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    def _pack(self) -> torch.Tensor:  # pragma: no cover (each module implements it)
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

    def packed_weight(self) -> torch.Tensor:
        """The weight repacked for the C kernel (built on first use, then cached).

        >>> layer.packed_weight().dtype
        torch.uint8
        """
        key = tuple(
            v for t in (self.qweight, self.scale, self.zero_point) for v in (t.data_ptr(), t._version)
        )
        cache = self._packed_cache
        if cache is None or cache[0] != key:
            packed = self._pack()
            object.__setattr__(self, "_packed_cache", (key, packed))
            return packed
        return cache[1]

    def packed_bytes(self) -> int:
        """Bytes of the in-memory repacked copy (0 until the first CPU forward).

        >>> layer(torch.randn(1, layer.in_features)); layer.packed_bytes() > 0
        True
        """
        cache = self._packed_cache
        return 0 if cache is None else cache[1].numel()

    def release_packed(self) -> None:
        """Drop the repacked copy (the next CPU forward rebuilds it)."""
        object.__setattr__(self, "_packed_cache", None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # type: ignore[attr-defined]
        state.pop("_packed_cache", None)
        return state
