"""The one place that imports the C extension and decides, per call, C or torch reference.

Every public kernel here takes and returns torch tensors. A call runs in C when the C
extension is built, the tensors are on the CPU and of a dtype C takes; otherwise it runs the
pure-torch twin in ``_reference``, so CUDA tensors work too. ``use_backend("reference")``
forces the torch path (the tests run every suite on both).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from collections.abc import Iterator

import torch

from . import _reference as ref

try:
    _C = importlib.import_module("mono_quant._C")
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
# Static quantization: histogram (observers) and the integer x integer linear layer.
# ---------------------------------------------------------------------------------------------


def histogram(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """Counts (int64 ``[bins]``, on ``x``'s device) of ``x``'s elements in ``bins`` equal bins
    over ``[lo, hi]``; values outside the range count in the first or last bin. ``lo`` and
    ``hi`` are rounded to float32 first (see ``_reference.histogram`` for the exact rule).

    >>> counts = histogram(activations, -4.0, 4.0, 2048)
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= ref.HISTOGRAM_MAX_BINS:
        raise ValueError(f"bins must be an integer from 1 to {ref.HISTOGRAM_MAX_BINS}; got {bins!r}")
    lo32, hi32 = (torch.tensor(float(v), dtype=torch.float32) for v in (lo, hi))
    step = torch.tensor(float(bins), dtype=torch.float32) / (hi32 - lo32)
    if not (bool(lo32 < hi32) and bool(torch.isfinite(hi32 - lo32)) and bool(torch.isfinite(step))):
        raise ValueError(
            f"histogram range [{lo:g}, {hi:g}] is invalid: lo < hi must hold, with hi - lo "
            "finite in float32 and not so small that bins / (hi - lo) overflows"
        )
    x = x.detach()
    if not _use_c(x):
        return ref.histogram(x, float(lo32), float(hi32), bins)
    counts = torch.empty(bins, dtype=torch.int64)
    _C.histogram(_dl(x.reshape(-1)), float(lo32), float(hi32), _dl_out(counts), num_threads())
    return counts


def linear_static(
    xq: torch.Tensor,
    x_scale: float | torch.Tensor,
    x_zp: int | torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    w_zp: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Linear layer on quantized operands: ``xq [..., K]`` (int8/uint8, one scale and zero
    point) times ``wq [N, K]`` (int8/uint8, per output channel) -> float ``[..., N]``:
    ``float32(sum_k (xq - x_zp)(wq - w_zp)) * (x_scale * w_scale) + bias``, the sum exact.

    >>> xq = quantize(x, x_scale, x_zp, axis=None, qdtype=torch.uint8)
    >>> y = linear_static(xq, x_scale, x_zp, layer.qweight, layer.scale, layer.zero_point, layer.bias)
    """
    x_scale = float(x_scale)
    x_zp = int(x_zp)
    _int8_range(xq.dtype)
    _int8_range(wq.dtype)
    if wq.dim() != 2 or xq.dim() < 1 or xq.shape[-1] != wq.shape[1]:
        raise ValueError(
            f"linear_static needs xq [..., K] and wq [N, K] with the same K; got "
            f"{tuple(xq.shape)} and {tuple(wq.shape)}"
        )
    n, k = wq.shape
    if n < 1 or k < 1:
        raise ValueError(f"wq must have at least one row and one column; got {tuple(wq.shape)}")
    if k > ref.LINEAR_STATIC_MAX_K:
        raise ValueError(f"linear_static takes at most {ref.LINEAR_STATIC_MAX_K} input features; got {k}")
    if w_scale.numel() != n or w_zp.numel() != n or (bias is not None and bias.numel() != n):
        raise ValueError(
            f"w_scale, w_zero_point and bias need one value per output channel ({n}); got "
            f"{w_scale.numel()}, {w_zp.numel()} and {'-' if bias is None else bias.numel()}"
        )
    if out_dtype not in C_FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be one of {', '.join(map(str, C_FLOAT_DTYPES))}; got {out_dtype}")
    x2 = xq.detach().reshape(-1, k)
    lead = xq.shape[:-1]
    if not (_use_c(x2, dtypes=(torch.int8, torch.uint8)) and wq.device.type == "cpu"):
        out = ref.linear_static(x2, x_scale, x_zp, wq.detach(), w_scale, w_zp, bias, out_dtype)
        return out.reshape(*lead, n)
    out = torch.empty(x2.shape[0], n, dtype=out_dtype)
    _C.linear_static(
        _dl(x2), x_scale, x_zp, _dl(wq), _dl(w_scale.float().reshape(-1)),
        _dl(w_zp.to(torch.int32).reshape(-1)), None if bias is None else _dl(bias.float().reshape(-1)),
        _dl_out(out), num_threads(),
    )
    return out.reshape(*lead, n)
