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
from torch.utils.dlpack import to_dlpack as _to_dlpack

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
_C_FLOAT_DTYPE_SET = frozenset(C_FLOAT_DTYPES)


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
    return _capsule(t.detach().contiguous())


def _capsule(t: torch.Tensor):
    """A DLPack capsule of ``t`` as it is: a contiguous, grad-free input, or an output that
    torch allocated and C fills in place. ``to_dlpack`` builds the same (legacy) capsule as
    ``Tensor.__dlpack__`` but in C, ~2 us faster per argument, which shows on small layers
    called once per token."""
    return _to_dlpack(t)


def cpu_features() -> dict[str, bool | str]:
    """CPU features detected by the C core, the Linear kernel path it selected
    (``"linear_kernel"``) and the threads its jobs run on (``"threads"``: ``"libgomp"``,
    torch's OpenMP team, or ``"own"``, mono_quant's pool)."""
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
        _C.minmax(_dl(x3), _capsule(mn), _capsule(mx), num_threads())
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
    _C.qparams(_dl(mn1), _dl(mx1), _capsule(scale), _capsule(zp), qmin, qmax, bool(symmetric))
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
                _capsule(q), num_threads())
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
                  _capsule(out), num_threads())
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
    _C.histogram(_dl(x.reshape(-1)), float(lo32), float(hi32), _capsule(counts), num_threads())
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
        _capsule(out), num_threads(),
    )
    return out.reshape(*lead, n)


def _check_canonical_int8(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[int, int]:
    """``(out_features, in_features)`` of a canonical INT8 weight about to be packed, or the
    error that says what is wrong with it (shared by the dynamic and static packers)."""
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
    return n, k


def pack_linear_static(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Repack a canonical INT8 weight (``qweight`` int8/uint8 ``[out, in]``, ``scale`` float32
    ``[out]``, ``zero_point`` int32 ``[out]``) for ``linear_static_packed``: the packed INT8
    layout of ``pack_linear_int8`` plus one int64 weight sum per row. Do it once per layer.

    >>> packed = pack_linear_static(layer_q, layer_scale, layer_zp)
    >>> y = linear_static_packed(x, 0.02, 128, False, packed, 32, 64, None)
    """
    n, k = _check_canonical_int8(qweight, scale, zero_point)
    if not _use_c(qweight, dtypes=(torch.int8, torch.uint8)):
        return ref.pack_linear_static(qweight.detach(), scale.detach().float().reshape(-1),
                                      zero_point.detach().to(torch.int32).reshape(-1))
    packed = torch.empty(_C.linear_static_packed_size(n, k), dtype=torch.uint8)
    _C.linear_static_pack(_dl(qweight), _dl(scale.float().reshape(-1)),
                          _dl(zero_point.to(torch.int32).reshape(-1)), _capsule(packed), num_threads())
    return packed


def _linear_call_buffers(x: torch.Tensor, n: int, k: int, bias: torch.Tensor | None):
    """What a packed Linear C call takes besides the weight: ``x`` as a contiguous ``[m, k]``,
    an empty ``[m, n]`` output of x's dtype, and the bias capsule (or None)."""
    check_last_dim(x, k)
    x2 = x.detach().reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], n, dtype=x.dtype)
    return x2, out, None if bias is None else _linear_bias(bias)


def linear_static_packed(x: torch.Tensor, x_scale: float, x_zp: int, x_symmetric: bool, packed: torch.Tensor,
                         n: int, k: int, bias: torch.Tensor | None) -> torch.Tensor:
    """The C static INT8 Linear on a packed weight: ``x [..., k]`` (float32/float16/bfloat16)
    quantized per tensor with ``x_scale`` / ``x_zp`` (to int8 when ``x_symmetric``, else
    uint8) exactly as ``quantize`` does, times the weight with an exact integer sum, rescaled
    in float32 -> ``[..., n]`` of x's dtype: the bits of ``linear_static(quantize(x), ...)``.
    The hot path of ``StaticQuantizedLinear``, for inputs ``linear_packed_uses_c`` accepted.

    >>> y = linear_static_packed(torch.randn(4, 64), 0.02, 128, False, packed, 32, 64, None)
    """
    x2, out, bias_capsule = _linear_call_buffers(x, n, k, bias)
    _C.linear_static_packed(_capsule(x2), x_scale, x_zp, x_symmetric, _capsule(packed), n, k, bias_capsule,
                            _capsule(out), num_threads())
    return out.view(*x.shape[:-1], n)


def linear_static_isa() -> str | None:
    """The static Linear path in use ("portable" or "avx512_vnni"; it follows
    ``use_linear_isa``), or None without the C build."""
    return None if _C is None else _C.linear_static_isa()


# ---------------------------------------------------------------------------------------------
# INT4 group-wise: quantize + pack, unpack + dequantize, pack / unpack nibbles.
# ---------------------------------------------------------------------------------------------

INT4_GROUP_SIZES = ref.INT4_GROUP_SIZES
INT4_SCALE_METHODS = ref.INT4_SCALE_METHODS
# "mse" costs about 3x "absmax" in C and gains 0.9 to 1.6 dB on Gaussian weights (symmetric,
# g32..g256; docs/design.md); the config default lives in mono_quant.config.
INT4_DEFAULT_SCALE_METHOD = "mse"
_INT4_METHOD_CODES = {"absmax": 0, "mse": 1}  # mq_int4_scale_method


def int4_quantize(
    w: torch.Tensor,
    group_size: int = 128,
    symmetric: bool = True,
    scale_method: str = INT4_DEFAULT_SCALE_METHOD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """INT4 group-wise quantization of a 2-D weight ``[out, in]`` along ``in``.

    Returns ``qweight`` uint8 ``[out, in // 2]`` (even ``k`` in the low nibble), ``scale``
    float16 ``[out, in // group_size]`` and ``zero_point`` uint8 (8 when symmetric).

    >>> qweight, scale, zp = int4_quantize(linear.weight, group_size=128)
    >>> w_hat = int4_dequantize(qweight, scale, zp, group_size=128)
    """
    check_int4_group_size(group_size)
    if scale_method not in INT4_SCALE_METHODS:
        raise ValueError(f"scale_method must be one of {', '.join(map(repr, INT4_SCALE_METHODS))}; "
                         f"got {scale_method!r}")
    w = w.detach()
    if w.dim() != 2:
        raise ValueError(f"int4_quantize takes a 2-D weight [out_features, in_features]; got shape "
                         f"{tuple(w.shape)} (reshape it to 2-D first)")
    if not w.is_floating_point():
        raise TypeError(f"int4_quantize needs a floating-point weight (float32, float16 or bfloat16); "
                        f"got {w.dtype} (convert with .float())")
    check_int4_divisible(w.shape[1], group_size)
    if w.dtype == torch.float64:
        w = w.float()  # quantization arithmetic is float32 on both backends
    if not _use_c(w):
        return ref.int4_quantize(w, group_size, bool(symmetric), scale_method)
    w = w.contiguous()
    n, k = w.shape
    qweight = torch.empty(n, k // 2, dtype=torch.uint8)
    scale = torch.empty(n, k // group_size, dtype=torch.float16)
    zero_point = torch.empty(n, k // group_size, dtype=torch.uint8)
    _C.int4_quantize(_dl(w), _capsule(qweight), _capsule(scale), _capsule(zero_point), group_size,
                     bool(symmetric), _INT4_METHOD_CODES[scale_method], num_threads())
    return qweight, scale, zero_point


def int4_dequantize(
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The float weight ``[out, in]`` of an INT4 triple: ``(nibble - zero_point) * scale``.

    >>> w_hat = int4_dequantize(qweight, scale, zp, group_size=128, out_dtype=torch.float16)
    >>> w_hat.shape == (qweight.shape[0], 2 * qweight.shape[1])
    """
    check_int4_group_size(group_size)
    _check_uint8_2d("qweight", qweight)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    check_int4_divisible(k, group_size, what="2 * qweight.shape[1]")
    expected = (n, k // group_size)
    for name, t, dtype in (("scale", scale, torch.float16), ("zero_point", zero_point, torch.uint8)):
        if t.dtype != dtype:
            raise TypeError(f"{name} must be {dtype} as int4_quantize returns it; got {t.dtype}")
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape {list(expected)} for qweight {list(qweight.shape)} "
                             f"and group_size {group_size}; got {list(t.shape)}")
    if not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating-point dtype; got {out_dtype}")
    qweight, scale, zero_point = qweight.detach(), scale.detach(), zero_point.detach()
    if not _use_c(qweight, dtypes=(torch.uint8,)) or out_dtype not in C_FLOAT_DTYPES:
        return ref.int4_dequantize(qweight, scale, zero_point, group_size, out_dtype)
    out = torch.empty(n, k, dtype=out_dtype)
    _C.int4_dequantize(_dl(qweight), _dl(scale), _dl(zero_point), _capsule(out), group_size,
                       num_threads())
    return out


def int4_pack(nibbles: torch.Tensor) -> torch.Tensor:
    """Pack uint8 nibbles ``[n, k]`` (values 0..15, ``k`` even) into ``[n, k // 2]`` bytes.

    >>> int4_pack(torch.tensor([[1, 2]], dtype=torch.uint8))
    tensor([[33]], dtype=torch.uint8)
    """
    _check_uint8_2d("nibbles", nibbles)
    if nibbles.shape[1] % 2:
        raise ValueError(f"nibbles must have an even number of columns; got {nibbles.shape[1]}")
    nibbles = nibbles.detach()
    if not _use_c(nibbles, dtypes=(torch.uint8,)):
        return ref.int4_pack(nibbles)
    qweight = torch.empty(nibbles.shape[0], nibbles.shape[1] // 2, dtype=torch.uint8)
    _C.int4_pack(_dl(nibbles), _capsule(qweight), num_threads())
    return qweight


def int4_unpack(qweight: torch.Tensor) -> torch.Tensor:
    """Unpack ``[n, k // 2]`` bytes into uint8 nibbles ``[n, k]`` (the inverse of ``int4_pack``).

    >>> int4_unpack(torch.tensor([[33]], dtype=torch.uint8))
    tensor([[1, 2]], dtype=torch.uint8)
    """
    _check_uint8_2d("qweight", qweight)
    qweight = qweight.detach()
    if not _use_c(qweight, dtypes=(torch.uint8,)):
        return ref.int4_unpack(qweight)
    nibbles = torch.empty(qweight.shape[0], 2 * qweight.shape[1], dtype=torch.uint8)
    _C.int4_unpack(_dl(qweight), _capsule(nibbles), num_threads())
    return nibbles


def check_int4_group_size(group_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` is one of ``INT4_GROUP_SIZES``."""
    if isinstance(group_size, bool) or group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}; "
                         f"got {group_size!r}")


def int4_group_size_hint(k: int) -> str:
    """What to do when ``k`` is not a multiple of the group size (for error messages)."""
    fitting = [g for g in INT4_GROUP_SIZES if k % g == 0]
    if fitting:
        return f"use group_size={fitting[-1]} (divides {k}) or quantize this layer as INT8"
    return "no INT4 group size divides it; quantize this layer as INT8 per channel"


def check_int4_divisible(k: int, group_size: int, what: str = "in_features") -> None:
    if k % group_size:
        raise ValueError(f"{what} ({k}) must be a multiple of group_size ({group_size}); "
                         f"{int4_group_size_hint(k)}")


def _check_uint8_2d(name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be a uint8 tensor; got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, columns]; got shape {tuple(t.shape)}")
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
    n, k = _check_canonical_int8(qweight, scale, zero_point)
    if not _use_c(qweight, dtypes=(torch.int8, torch.uint8)):
        return ref.pack_linear_int8(qweight.detach(), scale.detach(), zero_point.detach())
    packed = torch.empty(_C.linear_int8_packed_size(n, k), dtype=torch.uint8)
    _C.linear_int8_pack(_dl(qweight), _dl(scale.float().reshape(-1)),
                        _dl(zero_point.to(torch.int32).reshape(-1)), _capsule(packed), num_threads())
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
    _C.linear_int4_pack(_dl(qweight), _dl(scale), _dl(zero_point), group_size, _capsule(packed),
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
        out = linear_packed(x2, packed, out_features, in_features, 0, bias)
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
        out = linear_packed(x2, packed, out_features, in_features, group_size, bias)
    else:
        out = ref.linear_int4(x2, packed, out_features, in_features, group_size, bias)
    return out.reshape(*x.shape[:-1], out_features)


def linear_packed(x: torch.Tensor, packed: torch.Tensor, n: int, k: int, group_size: int,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """The C Linear kernel on a packed weight (``group_size`` 0: INT8, else INT4), with no
    argument checks beyond x's last dimension and the C ones: the hot path of the quantized Linear modules, for
    inputs ``linear_packed_uses_c`` accepted. ``x [..., k]`` -> ``[..., n]`` of x's dtype.

    >>> y = linear_packed(torch.randn(4, 64), pack_linear_int8(q, scale, zp), 32, 64, 0, None)
    """
    x2, out, bias_capsule = _linear_call_buffers(x, n, k, bias)
    if group_size:
        _C.linear_int4(_capsule(x2), _capsule(packed), n, k, group_size, bias_capsule, _capsule(out), num_threads())
    else:
        _C.linear_int8(_capsule(x2), _capsule(packed), n, k, bias_capsule, _capsule(out), num_threads())
    return out.view(*x.shape[:-1], n)


def check_last_dim(x: torch.Tensor, k: int) -> None:
    """ValueError unless ``x`` has ``k`` values in its last dimension (``reshape(-1, k)``
    would silently take a ``[2, 128]`` input of a 64-feature layer as ``[4, 64]``)."""
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have in_features={k} values in its last dimension; got shape {tuple(x.shape)}")


def linear_packed_uses_c(x: torch.Tensor, packed: torch.Tensor) -> bool:
    """True when ``linear_packed`` may run ``x`` on ``packed``: both on the CPU, ``x`` of a
    dtype the kernel takes, the extension built and the backend not ``"reference"`` (under
    which the modules compute in float, in torch)."""
    # Per-call hot path: Tensor.is_cpu and a frozenset cost a fraction of .device.type and a tuple.
    return x.is_cpu and packed.is_cpu and x.dtype in _C_FLOAT_DTYPE_SET and linear_c_enabled()


def linear_c_enabled() -> bool:
    """True when quantized Linear modules may run the C kernel: the extension is built and
    the backend is not ``"reference"`` (under which they compute in float, in torch)."""
    return _C is not None and _backend.get() != "reference"


def linear_isas() -> list[str]:
    """The quantized Linear paths this CPU can run, best last (``[]`` without the C build)."""
    return [] if _C is None else list(_C.linear_isas())


def linear_isa() -> str | None:
    """The quantized Linear path in use ("portable", "avx2", "avx512_vnni" or "amx")."""
    return None if _C is None else _C.cpu_features()["linear_kernel"]


def linear_isa_supported(name: str) -> bool:
    """Whether Linear path ``name`` can run here; also knows the test-only ``"amx_emulated"``
    (the AMX kernel with its tile instructions computed in C, on any AVX-512 VNNI CPU).

    >>> linear_isa_supported("amx_emulated")
    True
    """
    return _C is not None and bool(_C.linear_isa_supported(name))


def linear_batch_path() -> tuple[str, int] | None:
    """The kernel the active Linear path runs for batches and the batch it starts at, e.g.
    ``("amx", 16)`` on a CPU with AMX-INT8; None when every batch runs the path's row kernels
    (a few batch rows per pass over the weights: portable, avx2, avx512_vnni) or without the
    C build.

    >>> linear_batch_path()   # on a Xeon with AMX
    ('amx', 16)
    """
    if _C is None:
        return None
    feats = _C.cpu_features()
    name = feats["linear_batch_kernel"]
    return None if name is None else (name, int(feats["linear_batch_min"]))


def linear_path_text() -> str:
    """The Linear kernels in one phrase, for version strings and benchmark headers:
    ``"avx512_vnni"``, or ``"amx, batch >= 16: amx"`` where batches run on AMX tiles.

    >>> linear_path_text()
    'avx512_vnni'
    """
    isa = linear_isa()
    if isa is None:
        return "none (C extension not built; torch reference)"
    batch = linear_batch_path()
    return isa if batch is None else f"{isa}, batch >= {batch[1]}: {batch[0]}"


@contextlib.contextmanager
def _c_setting(setter: str, value) -> Iterator[None]:
    """Inside the ``with`` block, the C core's process-wide setting ``_C.<setter>`` holds
    ``value`` (the setter returns the previous one, restored on exit): the test hooks below."""
    if _C is None:
        raise RuntimeError(f"the C extension mono_quant._C is not built ({_C_IMPORT_ERROR})")
    before = getattr(_C, setter)(value)
    try:
        yield
    finally:
        getattr(_C, setter)(before)


def use_linear_gemm_min_batch(m: int) -> contextlib.AbstractContextManager[None]:
    """Test and benchmark hook: batches of at least ``m`` rows run the active path's batch
    (GEMM) kernel inside the ``with`` block (``m = 2**62``: never; process-wide, not
    thread-safe). Results agree within the documented tolerance either way.

    >>> with use_linear_gemm_min_batch(1):
    ...     y = linear_int8(x, packed, 64, 32)
    """
    return _c_setting("set_linear_gemm_min_batch", m)


def use_linear_isa(name: str) -> contextlib.AbstractContextManager[None]:
    """Test hook: force one quantized Linear path inside a ``with`` block (process-wide, not
    thread-safe). Refuses a path this CPU cannot run.

    >>> with use_linear_isa("portable"):
    ...     y = linear_int8(x, packed, 64, 32)
    """
    return _c_setting("set_linear_isa", name)


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


def _linear_bias(bias: torch.Tensor):
    if bias.dtype not in C_FLOAT_DTYPES:
        bias = bias.float()
    return _capsule(bias.detach().contiguous())


# ---------------------------------------------------------------------------------------------
# GPTQ: the Hessian of a layer's inputs and the column loop (csrc/gptq.c, twin in _reference).
# ---------------------------------------------------------------------------------------------

GPTQ_BLOCK_SIZE = 128  # columns per lazy batch: changes the speed of gptq_int4, never its result


def gptq_hessian_add(x: torch.Tensor, mask: torch.Tensor | None, h: torch.Tensor) -> int:
    """Add ``x^T x`` over the rows of ``x [rows, k]`` whose ``mask`` is non-zero (every row when
    ``mask`` is None) to the upper triangle (``j >= i``) of ``h``, a contiguous float64
    ``[k, k]`` tensor, in place; returns the rows counted. Call ``hessian_symmetric(h)`` after
    the last batch. Products are exact in float64; the C kernel's sums do not depend on the
    thread count.

    >>> h = torch.zeros(64, 64, dtype=torch.float64)
    >>> gptq_hessian_add(torch.randn(10, 64), None, h)
    10
    """
    if x.dim() != 2 or x.shape[1] < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating-point tensor [rows, k] with k >= 1; "
                         f"got {x.dtype} with shape {tuple(x.shape)}")
    k = x.shape[1]
    if h.dtype != torch.float64 or tuple(h.shape) != (k, k) or not h.is_contiguous():
        raise ValueError(f"h must be a contiguous float64 tensor of shape [{k}, {k}]; got {h.dtype} "
                         f"with shape {tuple(h.shape)}")
    if mask is not None and (mask.dim() != 1 or mask.shape[0] != x.shape[0]):
        raise ValueError(f"mask must hold one value per row of x ({x.shape[0]}); got shape {tuple(mask.shape)}")
    x = x.detach()
    if x.dtype == torch.float64 or not (_use_c(x) and h.device.type == "cpu"
                                        and (mask is None or mask.device.type == "cpu")):
        return ref.gptq_hessian_add(x, mask, h)
    mask_capsule = None if mask is None else _dl(mask.to(torch.uint8))
    return int(_C.gptq_hessian_add(_dl(x), mask_capsule, _capsule(h), num_threads()))


def hessian_symmetric(h: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix of an upper triangle accumulated by ``gptq_hessian_add`` into
    a tensor that started as zeros (its lower triangle is still zero)."""
    return h + torch.triu(h, 1).T


def gptq_int4(
    w: torch.Tensor,
    v: torch.Tensor,
    perm: torch.Tensor | None,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    block_size: int = GPTQ_BLOCK_SIZE,
) -> torch.Tensor:
    """The GPTQ column loop: quantize ``w [n, k]`` (float, columns in processing order:
    column ``i`` is the layer's column ``perm[i]``) to INT4, feeding each column's rounding error
    into the later ones through ``v``, the upper triangular factor with ``v @ v.T`` = the damped
    Hessian in the same order, using the static groups ``scale`` (float16) / ``zero_point``
    (uint8) ``[n, k // group_size]`` of the layer's own column order. Returns ``qweight`` uint8
    ``[n, k // 2]`` in the layer's order, the canonical INT4 layout; nothing passed in is
    modified. See ``mq_gptq_int4`` in ``csrc/mono_quant.h`` for the exact arithmetic (the torch
    twin gives the same bits).

    >>> _, scale, zp = int4_quantize(weight, 128, symmetric=False)
    >>> qweight = gptq_int4(weight, v, None, scale, zp, 128)
    """
    check_int4_group_size(group_size)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1; got {block_size!r}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a 2-D floating-point weight [out_features, in_features]; "
                         f"got {w.dtype} with shape {tuple(w.shape)}")
    n, k = w.shape
    check_int4_divisible(k, group_size)
    want = {"v": ((k, k), None), "scale": ((n, k // group_size), torch.float16),
            "zero_point": ((n, k // group_size), torch.uint8)}
    for name, t in (("v", v), ("scale", scale), ("zero_point", zero_point)):
        shape, dtype = want[name]
        if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
            raise ValueError(f"{name} must have shape {list(shape)}{'' if dtype is None else f' and dtype {dtype}'}; "
                             f"got {t.dtype} with shape {list(t.shape)}")
    if perm is not None and (perm.shape != (k,) or perm.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"perm must be an integer tensor of shape [{k}]; got {perm.dtype} with shape {tuple(perm.shape)}")
    w, v = w.detach(), v.detach()
    tensors = (w, v, scale, zero_point) + (() if perm is None else (perm,))
    if not (_use_c(w) and all(t.device.type == "cpu" for t in tensors)):
        return ref.gptq_int4(w, v, perm, scale, zero_point, group_size)
    qweight = torch.empty(n, k // 2, dtype=torch.uint8)
    _C.gptq_int4(_dl(w.float()), _dl(v.float()), None if perm is None else _dl(perm.to(torch.int64)),
                 _dl(scale), _dl(zero_point), group_size, block_size, _capsule(qweight), num_threads())
    return qweight


def gptq_isas() -> list[str]:
    """The GPTQ inner-loop tables this CPU can run, best last (``[]`` without the C build)."""
    return [] if _C is None else list(_C.gptq_isas())


def use_gptq_isa(name: str) -> contextlib.AbstractContextManager[None]:
    """Test hook: force one GPTQ inner-loop table inside a ``with`` block (process-wide).

    >>> with use_gptq_isa("portable"):
    ...     qweight = gptq_int4(w, v, None, scale, zp, 128)
    """
    return _c_setting("set_gptq_isa", name)


# ---------------------------------------------------------------------------------------------
# Embeddings: per-row INT8 tables, gather and bags (csrc/embedding.c, twin in _reference).
# ---------------------------------------------------------------------------------------------


def _embedding_use_c(qweight: torch.Tensor, idx: torch.Tensor, out_dtype: torch.dtype) -> bool:
    if _C is not None and qweight.is_cpu and idx.is_cpu and _backend.get() == "auto":  # the per-call hot path
        return out_dtype in _C_FLOAT_DTYPE_SET
    return _use_c(qweight, dtypes=(torch.int8, torch.uint8)) and idx.is_cpu and out_dtype in _C_FLOAT_DTYPE_SET


def _check_embedding_table(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    _int8_range(qweight.dtype)
    if qweight.dim() != 2 or qweight.shape[0] < 1 or qweight.shape[1] < 1:
        raise ValueError(f"qweight must be a [num_embeddings, embedding_dim] table; got shape {tuple(qweight.shape)}")
    rows = qweight.shape[0]
    if scale.numel() != rows or zero_point.numel() != rows:
        raise ValueError(f"scale and zero_point need one value per row ({rows}); got {scale.numel()} and "
                         f"{zero_point.numel()}")


def _embedding_indices(indices: torch.Tensor) -> torch.Tensor:
    """``indices`` as a contiguous 1-D int64 tensor (a view when it is one already: the per-call
    cost of a lookup is mostly such tensor calls, ~1 us each)."""
    if indices.dtype is torch.int64 and indices.is_contiguous() and not indices.requires_grad:
        return indices.view(-1)
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"embedding indices must be an int64 or int32 tensor (as F.embedding takes); got {indices.dtype}; "
            "convert them with .long()"
        )
    return indices.detach().reshape(-1).to(torch.int64).contiguous()


def _as_capsule(t: torch.Tensor, dtype: torch.dtype):
    """A capsule of ``t`` as ``dtype``, contiguous; no copy (and no tensor call) when it is so."""
    if t.dtype is not dtype:
        t = t.to(dtype)
    return _capsule(t if t.is_contiguous() and not t.requires_grad else t.detach().contiguous())


def embedding_int8(indices: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The rows ``indices`` (int64/int32, any shape) of a per-row INT8 table ``qweight
    [rows, dim]``, dequantized: ``[*indices.shape, dim]`` of ``out_dtype``. An index outside
    ``[0, rows)`` raises IndexError, as ``F.embedding`` does.

    >>> q, scale, zp = quantize_weight_int8(emb.weight, symmetric=False)
    >>> embedding_int8(torch.tensor([[1, 5]]), q, scale, zp).shape
    torch.Size([1, 2, dim])
    """
    _check_embedding_table(qweight, scale, zero_point)
    idx = _embedding_indices(indices)
    dim = qweight.shape[1]
    if not _embedding_use_c(qweight, idx, out_dtype):
        out = ref.embedding_int8_gather(qweight.detach(), scale, zero_point, idx.to(qweight.device))
        return out.to(out_dtype).reshape(*indices.shape, dim)
    out = torch.empty(idx.shape[0], dim, dtype=out_dtype)
    _C.embedding_int8_gather(_as_capsule(qweight, qweight.dtype), _as_capsule(scale, torch.float32),
                             _as_capsule(zero_point, torch.int32), _capsule(idx), _capsule(out), num_threads())
    return out.view(*indices.shape, dim)


def embedding_int8_bag(indices: torch.Tensor, offsets: torch.Tensor, per_sample_weights: torch.Tensor | None,
                       qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, mode: str = "mean",
                       padding_idx: int = -1, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bags of rows of a per-row INT8 table reduced by ``mode`` ("sum", "mean" or "max"):
    ``indices`` 1-D, ``offsets`` int64 ``[bags + 1]`` (bag b = ``indices[offsets[b]:offsets[b + 1]]``),
    ``per_sample_weights`` ``[n]`` (mode "sum") or None, rows equal to ``padding_idx`` (-1: none)
    left out; an empty bag gives zeros. Returns ``[bags, dim]`` of ``out_dtype``.

    >>> embedding_int8_bag(torch.tensor([1, 2, 4]), torch.tensor([0, 2, 3]), None, q, scale, zp, "sum").shape
    torch.Size([2, dim])
    """
    if mode not in ref.EMBEDDING_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, ref.EMBEDDING_MODES))}; got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(
            f"per_sample_weights are only supported for mode='sum' (as in torch); got mode={mode!r}")
    _check_embedding_table(qweight, scale, zero_point)
    idx = _embedding_indices(indices)
    off = offsets.detach().reshape(-1).to(torch.int64).contiguous()
    if off.numel() < 1:
        raise ValueError("offsets must hold bags + 1 values (the last one ends the last bag)")
    if off.numel() > 1 and int(off[0]) != 0:
        raise ValueError(f"offsets[0] has to be 0 (the first bag starts at position 0), as in torch; got {int(off[0])}")
    weights = None if per_sample_weights is None else per_sample_weights.detach().reshape(-1).float().contiguous()
    if weights is not None and weights.numel() != idx.numel():
        raise ValueError(f"per_sample_weights must hold one value per index ({idx.numel()}); got {weights.numel()}")
    dim = qweight.shape[1]
    if not (_embedding_use_c(qweight, idx, out_dtype) and off.is_cpu and (weights is None or weights.is_cpu)):
        dev = qweight.device
        out = ref.embedding_int8_bag(qweight.detach(), scale, zero_point, idx.to(dev), off.to(dev),
                                     None if weights is None else weights.to(dev), mode, padding_idx)
        return out.to(out_dtype)
    out = torch.empty(off.numel() - 1, dim, dtype=out_dtype)
    _C.embedding_int8_bag(_as_capsule(qweight, qweight.dtype), _as_capsule(scale, torch.float32),
                          _as_capsule(zero_point, torch.int32), _capsule(idx), _capsule(off),
                          None if weights is None else _capsule(weights), ref.EMBEDDING_MODES[mode], int(padding_idx),
                          _capsule(out), num_threads())
    return out


def embedding_isas() -> list[str]:
    """The embedding loops this CPU can run, best last (``[]`` without the C build)."""
    return [] if _C is None else list(_C.embedding_isas())


def use_embedding_isa(name: str) -> contextlib.AbstractContextManager[None]:
    """Test hook: force one set of embedding loops inside a ``with`` block (process-wide, not
    thread-safe), as ``use_linear_isa``.

    >>> with use_embedding_isa("portable"):
    ...     rows = embedding_int8(ids, q, scale, zp)
    """
    return _c_setting("set_embedding_isa", name)
