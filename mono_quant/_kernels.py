"""The one place that imports the C extension and decides, per call, C or torch reference.

Every public kernel here takes and returns torch tensors. A call runs in C when the C
extension is built, the tensors are on the CPU and of a dtype C takes; otherwise it runs the
pure-torch twin in ``_reference``, so CUDA tensors work too. ``use_backend("reference")``
forces the torch path (the tests run every suite on both).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator

import torch
from torch.utils.dlpack import to_dlpack as _to_dlpack

from . import _reference as ref

try:
    from . import _C  # type: ignore[attr-defined]

    _C_IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # a source tree without a build: run on torch, say so once
    _C = None
    _C_IMPORT_ERROR = exc

BACKENDS = ("auto", "c", "reference")
_backend: contextvars.ContextVar[str] = contextvars.ContextVar(
    "mono_quant_backend", default=os.environ.get("MONO_QUANT_BACKEND", "auto")
)
_warned_missing = False

C_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def c_available() -> bool:
    """True when the compiled extension ``mono_quant._C`` imported."""
    return _C is not None


def c_import_error() -> Exception | None:
    return _C_IMPORT_ERROR


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``"c"``, ``"reference"`` or ``"auto"`` inside a ``with`` block.

    >>> with use_backend("reference"):
    ...     q = quantize(w, scale, zp, axis=0, qdtype=torch.int8)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "c" and _C is None:
        raise RuntimeError(
            f"the C extension mono_quant._C is not built ({_C_IMPORT_ERROR}); "
            "reinstall with `pip install .` or build it with `make build`"
        )
    token = _backend.set(name)
    try:
        yield
    finally:
        _backend.reset(token)


def num_threads() -> int:
    """The kernels use as many threads as torch does (``torch.set_num_threads``)."""
    return max(1, torch.get_num_threads())


def _use_c(*tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = C_FLOAT_DTYPES) -> bool:
    global _warned_missing
    backend = _backend.get()
    if backend == "reference":
        return False
    if _C is None:
        if backend == "c":
            raise RuntimeError(f"the C extension mono_quant._C is not built ({_C_IMPORT_ERROR})")
        if not _warned_missing:
            warnings.warn(
                "mono_quant._C is not built; running the slower pure-torch kernels",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_missing = True
        return False
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in dtypes:
        if backend == "c":
            raise ValueError(
                f"the C backend takes CPU tensors of {', '.join(map(str, dtypes))}; "
                f"got {first.dtype} on {first.device}"
            )
        return False
    return True


def _dl(t: torch.Tensor):
    """A DLPack capsule of a contiguous, grad-free view of ``t`` (C borrows it for the call)."""
    return t.detach().contiguous().__dlpack__()


def cpu_features() -> dict[str, bool]:
    """CPU features detected by the C core and the kernel paths it selected."""
    if _C is None:
        return {}
    return dict(_C.cpu_features())


# ---------------------------------------------------------------------------------------------
# Foundation kernels: min/max, scale/zero point, INT8 quantize/dequantize, SQNR.
# ---------------------------------------------------------------------------------------------


def minmax(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` per channel along ``axis`` (or of the whole tensor), as float32.

    >>> mn, mx = minmax(weight, axis=0)   # shapes [out_features]
    """
    x3 = ref.as_channels(x.detach(), axis)
    if not _use_c(x3):
        mn, mx = ref.minmax(x3)
    else:
        x3 = x3.contiguous()
        mn = torch.empty(x3.shape[1], dtype=torch.float32)
        mx = torch.empty(x3.shape[1], dtype=torch.float32)
        _C.minmax(_dl(x3), _dl_out(mn), _dl_out(mx), num_threads())
    if axis is None:
        return mn.reshape(()), mx.reshape(())
    return mn, mx


def qparams(
    mn: torch.Tensor, mx: torch.Tensor, qdtype: torch.dtype = torch.int8, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for ranges ``[mn, mx]``; see ``_reference.qparams``.

    >>> scale, zp = qparams(*minmax(w, axis=0), torch.int8, symmetric=True)
    """
    qmin, qmax = _int8_range(qdtype)
    if not _use_c(mn, dtypes=(torch.float32,)):
        return ref.qparams(mn, mx, qmin, qmax, symmetric)
    shape = mn.shape
    mn1 = mn.reshape(-1).contiguous()
    mx1 = mx.float().reshape(-1).contiguous()
    scale = torch.empty_like(mn1)
    zp = torch.empty(mn1.shape, dtype=torch.int32)
    _C.qparams(_dl(mn1), _dl(mx1), _dl_out(scale), _dl_out(zp), qmin, qmax, bool(symmetric))
    return scale.reshape(shape), zp.reshape(shape)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor,
    axis: int | None = None,
    qdtype: torch.dtype = torch.int8,
) -> torch.Tensor:
    """INT8 quantization per channel along ``axis`` (or per tensor): round half to even, clamp.

    >>> q = quantize(w, scale, zp, axis=0, qdtype=torch.int8)
    """
    _int8_range(qdtype)
    x3 = ref.as_channels(x.detach(), axis)
    _check_channel_params(x3, scale, zp)
    if not _use_c(x3):
        return ref.quantize(x3, scale, zp, qdtype).reshape(x.shape)
    x3 = x3.contiguous()
    q = torch.empty(x3.shape, dtype=qdtype)
    _C.quantize(_dl(x3), _dl(scale.float().reshape(-1)), _dl(zp.to(torch.int32).reshape(-1)),
                _dl_out(q), num_threads())
    return q.reshape(x.shape)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor,
    axis: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of ``quantize``: ``(q - zp) * scale`` in float32, cast to ``out_dtype``.

    >>> w_hat = dequantize(q, scale, zp, axis=0)
    """
    _int8_range(q.dtype)
    q3 = ref.as_channels(q.detach(), axis)
    _check_channel_params(q3, scale, zp)
    if not _use_c(q3, dtypes=(torch.int8, torch.uint8)) or out_dtype not in C_FLOAT_DTYPES:
        return ref.dequantize(q3, scale, zp, out_dtype).reshape(q.shape)
    q3 = q3.contiguous()
    out = torch.empty(q3.shape, dtype=out_dtype)
    _C.dequantize(_dl(q3), _dl(scale.float().reshape(-1)), _dl(zp.to(torch.int32).reshape(-1)),
                  _dl_out(out), num_threads())
    return out.reshape(q.shape)


def sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """SQNR in dB of ``y`` against the reference ``x`` (``inf`` when identical).

    >>> sqnr(w, dequantize(q, scale, zp, axis=0))
    """
    x = x.detach()
    y = y.detach()
    if x.shape != y.shape:
        raise ValueError(f"sqnr needs tensors of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (_use_c(x) and _use_c(y)):
        return ref.sqnr(x, y)
    return float(_C.sqnr(_dl(x.reshape(-1)), _dl(y.reshape(-1)), num_threads()))


def _dl_out(t: torch.Tensor):
    """Capsule of an output tensor that torch allocated; C writes into it in place."""
    return t.__dlpack__()


def _int8_range(qdtype: torch.dtype) -> tuple[int, int]:
    if qdtype not in ref.INT8_RANGES:
        raise ValueError(f"qdtype must be torch.int8 or torch.uint8; got {qdtype}")
    return ref.INT8_RANGES[qdtype]


def _check_channel_params(x3: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> None:
    channels = x3.shape[1]
    if scale.numel() != channels or zp.numel() != channels:
        raise ValueError(
            f"scale and zero_point need one value per channel ({channels}); "
            f"got {scale.numel()} and {zp.numel()}"
        )


# ---------------------------------------------------------------------------------------------
# LINEAR: quantized Linear forward. Weights are repacked once (pack_linear_*) into an opaque
# uint8 tensor; each call quantizes the activations to int8 in blocks of 32 and runs integer
# dot products (csrc/linear*.c, or the torch twin in _reference for other devices / the
# reference backend). The canonical buffers stay what a module saves; ``packed`` is derived.
# ---------------------------------------------------------------------------------------------


def pack_linear_int8(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Repack a canonical INT8 weight (``qweight`` int8/uint8 ``[out, in]``, ``scale`` float32
    ``[out]``, ``zero_point`` int32 ``[out]``) for ``linear_int8``. Do it once per layer.

    >>> packed = pack_linear_int8(layer.qweight, layer.scale, layer.zero_point)
    >>> y = linear_int8(x, packed, layer.out_features, layer.in_features, layer.bias)
    """
    if qweight.dtype not in (torch.int8, torch.uint8) or qweight.dim() != 2:
        raise TypeError(
            f"qweight must be a 2-D int8 or uint8 tensor [out_features, in_features]; "
            f"got {qweight.dtype} with shape {tuple(qweight.shape)}"
        )
    n, k = qweight.shape
    if n < 1 or k < 1:
        raise ValueError(f"qweight must not be empty; got shape {tuple(qweight.shape)}")
    if scale.numel() != n or zero_point.numel() != n:
        raise ValueError(
            f"scale and zero_point need one value per output feature ({n}); "
            f"got {scale.numel()} and {zero_point.numel()}"
        )
    if not _use_c(qweight, dtypes=(torch.int8, torch.uint8)):
        return ref.pack_linear_int8(qweight.detach(), scale.detach(), zero_point.detach())
    packed = torch.empty(_C.linear_int8_packed_size(n, k), dtype=torch.uint8)
    _C.linear_int8_pack(_dl(qweight), _dl(scale.float().reshape(-1)),
                        _dl(zero_point.to(torch.int32).reshape(-1)), _dl_out(packed), num_threads())
    return packed


def pack_linear_int4(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """Repack a canonical INT4 weight (``qweight`` uint8 ``[out, in // 2]``, two nibbles per
    byte, even k low; ``scale`` float16 and ``zero_point`` uint8 ``[out, in // group_size]``)
    for ``linear_int4``. Do it once per layer.

    >>> packed = pack_linear_int4(layer.qweight, layer.scale, layer.zero_point, 128)
    >>> y = linear_int4(x, packed, layer.out_features, layer.in_features, 128, layer.bias)
    """
    ref.check_linear_group_size(group_size)
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise TypeError(
            f"qweight must be a 2-D uint8 tensor [out_features, in_features // 2]; "
            f"got {qweight.dtype} with shape {tuple(qweight.shape)}"
        )
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    ref.linear_int4_packed_size(n, k, group_size)  # raises for bad sizes
    want = (n, k // group_size)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name} must have shape [out_features, in_features // group_size] = "
                f"{list(want)}; got {list(t.shape)}"
            )
    if scale.dtype != torch.float16 or zero_point.dtype != torch.uint8:
        raise TypeError(
            f"scale must be float16 and zero_point uint8 (the canonical INT4 format); "
            f"got {scale.dtype} and {zero_point.dtype}"
        )
    if not _use_c(qweight, dtypes=(torch.uint8,)):
        return ref.pack_linear_int4(qweight.detach(), scale.detach(), zero_point.detach(), group_size)
    packed = torch.empty(_C.linear_int4_packed_size(n, k, group_size), dtype=torch.uint8)
    _C.linear_int4_pack(_dl(qweight), _dl(scale), _dl(zero_point), group_size, _dl_out(packed),
                        num_threads())
    return packed


def linear_int8(x: torch.Tensor, packed: torch.Tensor, out_features: int, in_features: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` with the INT8 weight packed by ``pack_linear_int8``; ``x [..., in]``
    float32/float16/bfloat16 -> ``[..., out]`` of x's dtype. Inference only (no gradient).

    >>> y = linear_int8(torch.randn(8, 4096), packed, 11008, 4096)
    >>> y.shape
    torch.Size([8, 11008])
    """
    x2 = _linear_input(x, packed, out_features, in_features, bias)
    if _linear_use_c(x2, packed, bias):
        out = torch.empty(x2.shape[0], out_features, dtype=x2.dtype)
        _C.linear_int8(_capsule(x2.contiguous()), _capsule(packed), out_features, in_features,
                       _linear_bias(bias), _capsule(out), num_threads())
    else:
        out = ref.linear_int8(x2, packed, out_features, in_features, bias)
    return out.reshape(*x.shape[:-1], out_features)


def linear_int4(x: torch.Tensor, packed: torch.Tensor, out_features: int, in_features: int,
                group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` with the INT4 weight packed by ``pack_linear_int4``; ``x [..., in]``
    float32/float16/bfloat16 -> ``[..., out]`` of x's dtype. Inference only (no gradient).

    >>> y = linear_int4(torch.randn(1, 4096), packed, 4096, 4096, 128)
    >>> y.shape
    torch.Size([1, 4096])
    """
    ref.check_linear_group_size(group_size)
    x2 = _linear_input(x, packed, out_features, in_features, bias)
    if _linear_use_c(x2, packed, bias):
        out = torch.empty(x2.shape[0], out_features, dtype=x2.dtype)
        _C.linear_int4(_capsule(x2.contiguous()), _capsule(packed), out_features, in_features,
                       group_size, _linear_bias(bias), _capsule(out), num_threads())
    else:
        out = ref.linear_int4(x2, packed, out_features, in_features, group_size, bias)
    return out.reshape(*x.shape[:-1], out_features)


def linear_isas() -> list[str]:
    """The quantized Linear paths this CPU can run, best last (``[]`` without the C build)."""
    return [] if _C is None else list(_C.linear_isas())


def linear_isa() -> str | None:
    """The quantized Linear path in use ("portable", "avx2" or "avx512_vnni")."""
    return None if _C is None else _C.cpu_features()["linear_kernel"]


@contextlib.contextmanager
def use_linear_isa(name: str) -> Iterator[None]:
    """Test hook: force one quantized Linear path inside a ``with`` block (process-wide, not
    thread-safe). Refuses a path this CPU cannot run.

    >>> with use_linear_isa("portable"):
    ...     y = linear_int8(x, packed, 64, 32)
    """
    if _C is None:
        raise RuntimeError(f"the C extension mono_quant._C is not built ({_C_IMPORT_ERROR})")
    before = _C.set_linear_isa(name)
    try:
        yield
    finally:
        _C.set_linear_isa(before)


def _linear_input(x: torch.Tensor, packed: torch.Tensor, out_features: int, in_features: int,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """Check the arguments of a linear call; return ``x`` as ``[batch, in_features]``."""
    if x.dtype not in C_FLOAT_DTYPES:
        raise TypeError(
            f"x must be float32, float16 or bfloat16; got {x.dtype} (convert with x.float())"
        )
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have in_features={in_features} values in its last dimension; "
            f"got shape {tuple(x.shape)}"
        )
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(
            "packed must be the 1-D uint8 tensor returned by pack_linear_int8 / pack_linear_int4; "
            f"got {packed.dtype} with shape {tuple(packed.shape)}"
        )
    if bias is not None and (bias.shape != (out_features,) or not bias.is_floating_point()):
        raise ValueError(
            f"bias must be a float tensor of shape [{out_features}]; "
            f"got {bias.dtype} with shape {tuple(bias.shape)}"
        )
    return x.detach().reshape(-1, in_features)


def _linear_use_c(x2: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if not _use_c(x2):
        return False
    others = (packed,) if bias is None else (packed, bias)
    if any(t.device.type != "cpu" for t in others):
        if _backend.get() == "c":
            raise ValueError("the C backend needs x, packed and bias on the CPU")
        return False
    return True


def _capsule(t: torch.Tensor):
    """A (legacy, unversioned) DLPack capsule of a contiguous, grad-free tensor. A forward
    call is ~100 us at batch 1, so the ~2 us ``Tensor.__dlpack__`` spends per argument in
    Python shows; ``to_dlpack`` is the same capsule built in C."""
    return _to_dlpack(t)


def _linear_bias(bias: torch.Tensor | None):
    if bias is None:
        return None
    return _capsule(bias.detach().to(bias.dtype if bias.dtype in C_FLOAT_DTYPES else torch.float32).contiguous())
