"""Pure-torch twin of every C kernel.

These functions define the exact arithmetic the C kernels must reproduce: the tests compare
the two bit for bit, and tensors the C side cannot take (CUDA, other devices) run here.
All math is done in float32 in the same order as the C code, so results agree exactly.

Layout convention shared with ``csrc/mono_quant.h``: a tensor quantized per channel along
``axis`` is viewed as ``[outer, channels, inner]``; per-tensor is ``channels == 1``.
"""

from __future__ import annotations

import math
import struct

import torch

# Smallest scale a quantizer hands out: keeps 1/scale finite for all-zero channels
# without flattening channels whose values are tiny but not zero (FLT_MIN in C).
MIN_SCALE = torch.finfo(torch.float32).tiny

INT8_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def as_channels(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as ``[outer, channels, inner]`` (``channels == 1`` for ``axis=None``)."""
    if axis is None:
        return x.reshape(1, 1, x.numel())
    axis = axis % x.dim()
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    return x.reshape(outer, x.shape[axis], inner)


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"argument '{name}' contains NaN or Inf: quantization needs finite values; "
            "replace them (torch.nan_to_num) or leave this layer unquantized"
        )


def minmax(x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max (float32, shape ``[channels]``) of ``x3 = [outer, C, inner]``."""
    check_finite(x3)
    if x3.numel() == 0:
        raise ValueError("argument 'x' is empty: min/max of an empty tensor is undefined")
    xt = x3.float().transpose(0, 1).reshape(x3.shape[1], -1)
    # + 0.0 canonicalises -0.0 to +0.0, as the C kernel does (which zero wins is unspecified)
    return xt.amin(dim=1) + 0.0, xt.amax(dim=1) + 0.0


def qparams(
    mn: torch.Tensor, mx: torch.Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) from per-channel ranges.

    symmetric:  scale = max(|min|, |max|) / ((qmax - qmin) // 2), zero point at the middle
                of the range (0 for int8, 128 for uint8).
    asymmetric: the range is widened to include 0, scale = (max - min) / (qmax - qmin),
                zero_point = qmin - round(min / scale), clamped to [qmin, qmax].
    Both clamp the scale to at least ``MIN_SCALE`` before the zero point is computed.
    """
    mn = mn.float()
    mx = mx.float()
    check_finite(mn, "min")
    check_finite(mx, "max")
    if bool((mn > mx).any()):
        raise ValueError("argument 'min' is greater than 'max' for some channel")
    if symmetric:
        amax = torch.maximum(mn.abs(), mx.abs())
        scale = amax / float((qmax - qmin) // 2)
        scale = torch.clamp_min(scale, MIN_SCALE)
        zp = torch.full_like(scale, (qmin + qmax + 1) // 2, dtype=torch.int32)
        return scale, zp
    lo = torch.clamp_max(mn, 0.0)
    hi = torch.clamp_min(mx, 0.0)
    levels = float(qmax - qmin)
    scale = (hi - lo) / levels
    # hi - lo can overflow float32 for huge ranges; the split form cannot
    scale = torch.where(torch.isinf(scale), hi / levels - lo / levels, scale)
    scale = torch.clamp_min(scale, MIN_SCALE)
    zp = qmin - torch.round(lo / scale)
    zp = torch.clamp(zp, qmin, qmax).to(torch.int32)
    return scale, zp


def quantize(
    x3: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qdtype: torch.dtype
) -> torch.Tensor:
    """q = clamp(round_half_even(x / scale) + zp, qmin, qmax), per channel of ``[outer, C, inner]``."""
    check_finite(x3)
    qmin, qmax = INT8_RANGES[qdtype]
    s = scale.float().reshape(1, -1, 1)
    z = zp.to(torch.int32).reshape(1, -1, 1).float()
    q = torch.round(x3.float() / s) + z
    return torch.clamp(q, qmin, qmax).to(qdtype)


def dequantize(
    q3: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """x = (q - zp) * scale in float32, then rounded (to nearest even) to ``out_dtype``."""
    s = scale.float().reshape(1, -1, 1)
    z = zp.to(torch.int32).reshape(1, -1, 1)
    return ((q3.to(torch.int32) - z).float() * s).to(out_dtype)


def sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of ``y`` as an approximation of ``x``.

    ``+inf`` when ``y == x`` exactly; ``-inf`` when the signal is zero but the noise is not.
    Accumulates in float64.
    """
    if x.shape != y.shape:
        raise ValueError(f"sqnr needs tensors of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    check_finite(x, "x")
    check_finite(y, "y")
    xd = x.double().reshape(-1)
    yd = y.double().reshape(-1)
    signal = float((xd * xd).sum())
    noise = float(((xd - yd) ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# ---------------------------------------------------------------------------------------------
# Static quantization: histogram (observers) and the integer x integer linear layer.
# ---------------------------------------------------------------------------------------------

HISTOGRAM_MAX_BINS = 1 << 24  # bins - 1 must be exact in float32
# Integer sums are formed in float64 below: exact while |sum| < 2^53, i.e. for up to
# 2^53 / 255^2 (about 1.4e11) input features.
LINEAR_STATIC_MAX_K = (1 << 53) // (255 * 255)


def histogram(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """Counts (int64 ``[bins]``) of the elements of ``x`` in ``bins`` equal bins over ``[lo, hi]``.

    Element v goes to bin ``clamp(floor((v - lo) * step), 0, bins - 1)`` with
    ``step = float32(bins) / (hi - lo)``, all in float32 (``lo``, ``hi`` are rounded to
    float32 first), so values outside the range land in the first or last bin.
    """
    check_finite(x)
    lo32 = torch.tensor(lo, dtype=torch.float32, device=x.device)
    hi32 = torch.tensor(hi, dtype=torch.float32, device=x.device)
    step = torch.tensor(float(bins), dtype=torch.float32, device=x.device) / (hi32 - lo32)
    t = torch.floor((x.reshape(-1).float() - lo32) * step)
    index = torch.clamp(t, 0.0, float(bins - 1)).long()
    return torch.bincount(index, minlength=bins)


def linear_static(
    xq: torch.Tensor,
    x_scale: float,
    x_zp: int,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    w_zp: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``[M, N]`` output of a Linear layer on quantized operands ``xq [M, K]``, ``wq [N, K]``:

        acc = (xq - x_zp) @ (wq - w_zp[:, None]).T        exact integers
        out = float32(acc) * (float32(x_scale) * w_scale) + bias

    The integer sum is formed in float64 (exact: products are at most 255^2 and every
    partial sum stays below 2^53), then rounded once to float32, like the C kernel's int64.
    """
    check_linear_static_values(xq.dtype, x_scale, x_zp, wq.dtype, w_scale, w_zp, bias)
    xs = xq.to(torch.float64) - float(x_zp)
    ws = wq.to(torch.float64) - w_zp.to(torch.float64).reshape(-1, 1)
    acc = xs @ ws.T + 0.0  # an integer sum has no -0 (float64 0 * -w would give one)
    scale = torch.tensor(x_scale, dtype=torch.float32, device=xq.device) * w_scale.float()
    out = acc.float() * scale
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def check_linear_static_values(
    x_qdtype: torch.dtype,
    x_scale: float,
    x_zp: int,
    w_qdtype: torch.dtype,
    w_scale: torch.Tensor,
    w_zp: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    """The value checks of the C kernel, with its message: scales finite and > 0 (their
    products finite), zero points inside their operand's range, a finite bias."""
    xs = torch.tensor(x_scale, dtype=torch.float32)
    ws = w_scale.detach().float().cpu()
    x_lo, x_hi = INT8_RANGES[x_qdtype]
    w_lo, w_hi = INT8_RANGES[w_qdtype]
    zp = w_zp.detach().cpu()
    ok = (
        bool(torch.isfinite(xs)) and float(xs) > 0.0 and x_lo <= int(x_zp) <= x_hi
        and bool((torch.isfinite(ws) & (ws > 0) & torch.isfinite(xs * ws)).all())
        and bool(((zp >= w_lo) & (zp <= w_hi)).all())
        and (bias is None or bool(torch.isfinite(bias.detach()).all()))
    )
    if not ok:
        raise ValueError(
            "linear_static: an argument is out of range: x_scale and every w_scale must be "
            "finite and > 0 (their products finite), each zero point inside its operand's "
            "integer range (int8: -128..127, uint8: 0..255), and the bias finite"
        )
# INT4 group-wise (twin of csrc/int4.c; formulas in csrc/mono_quant.h and docs/design.md)
# ---------------------------------------------------------------------------------------------

INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_SCALE_METHODS = ("absmax", "mse")
# Scales live in float16: clamped to its positive finite range before rounding into it.
INT4_MIN_SCALE = 2.0**-24
INT4_MAX_SCALE = 65504.0
# The candidates of scale_method="mse" (table in csrc/mono_quant.h): scale = range / divisor,
# the absmax divisor first; keyed by (symmetric, group_size).
INT4_MSE_DIVISORS = {
    (True, 32): (7.0, 7.5, 8.0, 8.5),
    (True, 64): (7.0, 7.75, 8.25, 8.75),
    (True, 128): (7.0, 8.0, 8.5, 9.0),
    (True, 256): (7.0, 8.5, 9.0, 9.75),
    (False, 32): (15.0, 15.25, 15.5, 16.0),
    (False, 64): (15.0, 15.5, 15.75, 16.25),
    (False, 128): (15.0, 15.75, 16.25, 17.0),
    (False, 256): (15.0, 16.5, 17.25, 18.0),
}


def _int4_scale(rng: torch.Tensor, divisor: float) -> torch.Tensor:
    """f16(clamp(range / divisor, 2^-24, 65504)) as float32: the scale that is stored."""
    s = torch.clamp(rng / divisor, INT4_MIN_SCALE, INT4_MAX_SCALE)
    return s.to(torch.float16).to(torch.float32)


def _int4_levels(x: torch.Tensor, s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """round_half_even(clamp(x / s, lo, hi)): signed levels, nibble = level + zero_point."""
    return torch.round(torch.clamp(x / s, lo, hi))


def _int4_group_error(x: torch.Tensor, s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Squared error per group of ``x [..., g]``, summed by C's pairwise tree (float32)."""
    d = x - _int4_levels(x, s, lo, hi) * s
    e = d * d
    while e.shape[-1] > 1:
        h = e.shape[-1] // 2
        e = e[..., :h] + e[..., h:]
    return e


def int4_quantize(
    x2: torch.Tensor, group_size: int, symmetric: bool, scale_method: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """INT4 group-wise quantization of ``x2 [n, k]`` -> (qweight uint8 [n, k/2], scale float16
    [n, k/g], zero_point uint8 [n, k/g]); see ``csrc/mono_quant.h`` for the formulas."""
    check_finite(x2)
    n, k = x2.shape
    if n * k == 0:
        params = torch.empty(n, k // group_size, device=x2.device)
        return (torch.empty(n, k // 2, dtype=torch.uint8, device=x2.device),
                params.to(torch.float16), params.to(torch.uint8))
    x = x2.float().reshape(n, k // group_size, group_size)
    mn = x.amin(dim=-1, keepdim=True)
    mx = x.amax(dim=-1, keepdim=True)
    divisors = INT4_MSE_DIVISORS[(symmetric, group_size)]
    if symmetric:
        rng = torch.maximum(mn.abs(), mx.abs())
        s = _int4_scale(rng, divisors[0])
        zp = torch.full_like(s, 8.0)
    else:
        lo_x = torch.clamp_max(mn, 0.0)
        rng = torch.clamp_min(mx, 0.0) - lo_x
        s = _int4_scale(rng, divisors[0])
        zp = torch.clamp(-torch.round(lo_x / s), 0.0, 15.0)
    lo, hi = -zp, 15.0 - zp
    if scale_method == "mse":
        best_err = _int4_group_error(x, s, lo, hi)
        for divisor in divisors[1:]:
            cand = _int4_scale(rng, divisor)
            err = _int4_group_error(x, cand, lo, hi)
            better = err < best_err  # strict: the first best wins
            best_err = torch.where(better, err, best_err)
            s = torch.where(better, cand, s)
    nibbles = (_int4_levels(x, s, lo, hi) + zp).to(torch.uint8).reshape(n, k)
    groups = k // group_size
    return (int4_pack(nibbles), s.reshape(n, groups).to(torch.float16),
            zp.reshape(n, groups).to(torch.uint8))


def int4_dequantize(
    qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``float32(nibble - zero_point) * float32(scale)``, rounded to ``out_dtype``, shape [n, k]."""
    s = scale.float()
    if not bool((torch.isfinite(s) & (s > 0)).all()) or bool((zero_point > 15).any()):
        raise ValueError(
            "int4_dequantize: every scale must be finite and > 0 and every zero_point at most 15; "
            "these tensors are not an INT4 weight"
        )
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    groups = k // group_size
    q = int4_unpack(qweight).to(torch.int32).reshape(n, groups, group_size)
    z = zero_point.to(torch.int32).reshape(n, groups, 1)
    return ((q - z).float() * s.reshape(n, groups, 1)).to(out_dtype).reshape(n, k)


def int4_pack(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, k]`` values 0..15 -> uint8 ``[n, k/2]``, even k in the low nibble."""
    if bool((nibbles > 15).any()):
        raise ValueError("int4_pack: nibbles must be 0..15; mask them with & 15")
    pairs = nibbles.reshape(nibbles.shape[0], nibbles.shape[1] // 2, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def int4_unpack(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, k/2]`` -> nibbles uint8 ``[n, k]`` (the inverse of ``int4_pack``)."""
    n, half = qweight.shape
    return torch.stack((qweight & 15, qweight >> 4), dim=-1).reshape(n, 2 * half)
# LINEAR: quantized Linear forward (twin of csrc/linear*.c; layouts in csrc/linear.h)
#
# Weights are repacked once into tiles of 16 interleaved output rows (``pack_linear_*``; the
# same bytes as the C packer, built here with torch so it works on any device). A forward
# quantizes the activations to int8 in blocks of 32 along k (one float32 scale per block),
# takes exact integer dot products per block and applies the scales in float32. The C paths
# differ from these functions only in float32 summation order and fused multiply-adds:
#     |y_c - y_twin| <= LINEAR_TWIN_RTOL * A + 1 ulp of the output dtype,
# A being the same computation over the absolute values of every term (see
# ``linear_error_scale``). Against float math on the dequantized weight the only error is
# the rounding of the activations, |x - d * xq| <= d / 2 per element:
#     |y - x @ w_hat.T| <= sum_b (d_b / 2) * sum_{k in b} |w_hat[n, k]|  (+ the rounding above).
# Rows with activations near the float32 maximum run scaled by a power of two
# (``linear_row_shift``), so no float32 sum overflows where the result is finite.
# ---------------------------------------------------------------------------------------------

LINEAR_QK = 32  # activations: one scale per block of 32 values along k
LINEAR_NR = 16  # output rows interleaved in one tile of the packed layout
LINEAR_GROUP_SIZES = (32, 64, 128, 256)
LINEAR_VERSION = 1
LINEAR_TWIN_RTOL = 2.0**-20
# A row with nb * max_b d[b] above 2^88 runs scaled by a power of two (see linear_row_shift).
LINEAR_SHIFT_LIMIT_LOG2 = 88
_LINEAR_HEADER = struct.Struct("<8siiqqqqqq")  # magic, version, g, n, k, kp, tiles, tile_bytes, 0
_MAGIC_INT8 = b"MQLINI8\0"
_MAGIC_INT4 = b"MQLINI4\0"
# a forward's block products are made in chunks of at most this many float32 values
_LINEAR_CHUNK_ELEMS = 1 << 22


def _round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


def _tiles(n: int) -> int:
    return (n + LINEAR_NR - 1) // LINEAR_NR


def _int8_tile_bytes(kp: int) -> int:
    return kp // LINEAR_QK * LINEAR_QK * LINEAR_NR + LINEAR_NR * 8


def _int4_tile_bytes(k: int, g: int) -> int:
    return k // g * (64 + g // LINEAR_QK * LINEAR_QK * LINEAR_NR // 2)


def check_linear_group_size(group_size: int) -> None:
    if group_size not in LINEAR_GROUP_SIZES:
        raise ValueError(f"group_size must be one of 32, 64, 128, 256; got {group_size}")


def linear_int8_packed_size(n: int, k: int) -> int:
    """Bytes of a packed INT8 ``[n, k]`` weight (header + tiles)."""
    if n < 1 or k < 1:
        raise ValueError(f"out_features and in_features must be >= 1; got {n} and {k}")
    return _LINEAR_HEADER.size + _tiles(n) * _int8_tile_bytes(_round_up(k, LINEAR_QK))


def linear_int4_packed_size(n: int, k: int, group_size: int) -> int:
    """Bytes of a packed INT4 ``[n, k]`` weight with groups of ``group_size`` along k."""
    check_linear_group_size(group_size)
    if n < 1 or k < 1 or k % group_size:
        raise ValueError(
            f"in_features ({k}) must be a positive multiple of group_size ({group_size}) "
            f"and out_features ({n}) positive"
        )
    return _LINEAR_HEADER.size + _tiles(n) * _int4_tile_bytes(k, group_size)


def _linear_header(magic: bytes, n: int, k: int, kp: int, g: int, tile_bytes: int,
                   device: torch.device) -> torch.Tensor:
    raw = _LINEAR_HEADER.pack(magic, LINEAR_VERSION, g, n, k, kp, _tiles(n), tile_bytes, 0)
    return torch.tensor(list(raw), dtype=torch.uint8, device=device)


def _check_linear_header(packed: torch.Tensor, magic: bytes, n: int, k: int, g: int) -> None:
    fmt = "INT4" if g else "INT8"
    size = linear_int4_packed_size(n, k, g) if g else linear_int8_packed_size(n, k)
    ok = packed.dtype == torch.uint8 and packed.dim() == 1 and packed.numel() == size
    if ok:
        fields = _LINEAR_HEADER.unpack(bytes(packed[: _LINEAR_HEADER.size].tolist()))
        ok = fields[:5] == (magic, LINEAR_VERSION, g, n, k)
    if not ok:
        group = f", group_size={g}" if g else ""
        raise ValueError(
            f"argument 'packed' does not hold a packed {fmt} weight with out_features={n}, "
            f"in_features={k}{group} (another layer's, or packed by another version of "
            f"mono_quant); re-pack the canonical weights with pack_linear_{fmt.lower()}"
        )


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The little-endian bytes of a 2-D tensor, ``[rows, cols * itemsize]`` uint8."""
    return t.contiguous().view(torch.uint8)


def pack_linear_int8(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The packed INT8 layout of ``csrc/linear.h``, byte for byte what the C packer writes."""
    n, k = qweight.shape
    scale = scale.float().reshape(-1)
    zero_point = zero_point.to(torch.int32).reshape(-1)
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError("pack_linear_int8: scales must be finite and > 0")
    lo, hi = INT8_RANGES[qweight.dtype]
    if not bool(((zero_point >= lo) & (zero_point <= hi)).all()):
        raise ValueError(
            "pack_linear_int8: zero points must lie within the range of qweight's dtype "
            "(-128..127 for int8, 0..255 for uint8)"
        )
    dev = qweight.device
    kp, tiles = _round_up(k, LINEAR_QK), _tiles(n)
    nb = kp // LINEAR_QK
    if qweight.dtype == torch.int8:  # wu = q - center + 128 as uint8
        wu, zero = (qweight.to(torch.int16) + 128).to(torch.uint8), zero_point
    else:
        wu, zero = qweight, zero_point - 128
    w = torch.full((tiles * LINEAR_NR, kp), 128, dtype=torch.uint8, device=dev)
    w[:n, :k] = wu
    # [tile, row, block, quad, j] -> [tile, block, quad, row, j]
    w = w.view(tiles, LINEAR_NR, nb, LINEAR_QK // 4, 4).permute(0, 2, 3, 1, 4).reshape(tiles, -1)
    s = torch.zeros(tiles * LINEAR_NR, dtype=torch.float32, device=dev)
    z = torch.zeros(tiles * LINEAR_NR, dtype=torch.int32, device=dev)
    s[:n] = scale
    z[:n] = zero
    body = torch.cat([w, _as_bytes(s.view(tiles, LINEAR_NR)), _as_bytes(z.view(tiles, LINEAR_NR))], dim=1)
    head = _linear_header(_MAGIC_INT8, n, k, kp, 0, _int8_tile_bytes(kp), dev)
    return torch.cat([head, body.reshape(-1)])


def unpack_linear_int8(packed: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_linear_int8``: ``w`` (int16, ``q - center``) ``[n, k]``, ``scale``
    float32 ``[n]`` and ``zero`` int32 ``[n]`` (``zero_point - center``), so that the weight
    is ``(w - zero) * scale``."""
    _check_linear_header(packed, _MAGIC_INT8, n, k, 0)
    kp, tiles = _round_up(k, LINEAR_QK), _tiles(n)
    nb = kp // LINEAR_QK
    body = packed[_LINEAR_HEADER.size :].view(tiles, _int8_tile_bytes(kp))
    wb = nb * LINEAR_QK * LINEAR_NR
    w = body[:, :wb].reshape(tiles, nb, LINEAR_QK // 4, LINEAR_NR, 4).permute(0, 3, 1, 2, 4)
    w = w.reshape(tiles * LINEAR_NR, kp)[:n, :k].to(torch.int16) - 128
    s = body[:, wb : wb + 64].contiguous().view(torch.float32).reshape(-1)[:n]
    z = body[:, wb + 64 :].contiguous().view(torch.int32).reshape(-1)[:n]
    return w, s, z


# Packed static INT8 (csrc/linear_static.h): the packed INT8 layout, then one int64 per padded
# row: qsum[r] = sum_i (q[r][i] - zero_point[r]), which a per-tensor input zero point needs,
# then 64 bytes: the largest scale (float32) and zeros.
LINEAR_STATIC_TAIL = 64


def linear_static_packed_size(n: int, k: int) -> int:
    """Bytes of a packed static INT8 ``[n, k]`` weight (packed INT8, int64 row sums, tail)."""
    return linear_int8_packed_size(n, k) + _tiles(n) * LINEAR_NR * 8 + LINEAR_STATIC_TAIL


def pack_linear_static(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The packed static INT8 layout, byte for byte what the C packer writes."""
    n, k = qweight.shape
    qsum = torch.zeros(_tiles(n) * LINEAR_NR, dtype=torch.int64, device=qweight.device)
    qsum[:n] = qweight.to(torch.int64).sum(1) - k * zero_point.to(torch.int64).reshape(-1)
    tail = torch.zeros(LINEAR_STATIC_TAIL, dtype=torch.uint8, device=qweight.device)
    tail[:4] = scale.float().max().reshape(1).view(torch.uint8)
    return torch.cat([pack_linear_int8(qweight, scale, zero_point), qsum.view(torch.uint8), tail])


def unpack_linear_static(packed: torch.Tensor, n: int, k: int, qdtype: torch.dtype
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_linear_static``: the canonical ``qweight`` (``qdtype``), ``scale``
    float32 and ``zero_point`` int32, as new tensors."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != linear_static_packed_size(n, k):
        raise ValueError(
            f"argument 'packed' does not hold a packed static INT8 weight with out_features={n}, "
            f"in_features={k} (another layer's, or packed by another version of mono_quant); "
            "re-pack the canonical weights with pack_linear_static"
        )
    w, scale, zero = unpack_linear_int8(packed[: linear_int8_packed_size(n, k)], n, k)
    center = 0 if qdtype == torch.int8 else 128
    return (w + center).to(qdtype), scale.clone(), zero + center


def pack_linear_int4(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """The packed INT4 layout of ``csrc/linear.h`` from the canonical INT4 weight."""
    check_linear_group_size(group_size)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    g = group_size
    ng = k // g
    s16 = scale.to(torch.float16).reshape(n, ng)
    zp = zero_point.to(torch.uint8).reshape(n, ng)
    sf = s16.float()
    if not bool((torch.isfinite(sf) & (sf > 0)).all()) or bool((zp > 15).any()):
        raise ValueError(
            f"pack_linear_int4: group_size must be one of 32, 64, 128, 256 (got {g}), scales "
            "finite and > 0 and zero points in 0..15"
        )
    dev = qweight.device
    tiles, bpg = _tiles(n), g // LINEAR_QK
    nib = unpack_nibbles(qweight)  # [n, k], 0..15
    u = torch.zeros(tiles * LINEAR_NR, k, dtype=torch.uint8, device=dev)
    u[:n] = nib
    # k = 32 * block + 16 * half + 4 * quad + j; byte = low half | high half << 4
    u = u.view(tiles, LINEAR_NR, ng, bpg, 2, 4, 4)
    data = (u[:, :, :, :, 0] | (u[:, :, :, :, 1] << 4))  # [tile, row, grp, blk, quad, j]
    data = data.permute(0, 2, 3, 4, 1, 5).reshape(tiles, ng, bpg * LINEAR_QK * LINEAR_NR // 2)
    sp = torch.zeros(tiles * LINEAR_NR, ng, dtype=torch.float16, device=dev)
    zpp = torch.zeros(tiles * LINEAR_NR, ng, dtype=torch.uint8, device=dev)
    sp[:n] = s16
    zpp[:n] = zp
    sp = sp.view(tiles, LINEAR_NR, ng).transpose(1, 2).contiguous()  # [tile, grp, row]
    zpp = zpp.view(tiles, LINEAR_NR, ng).transpose(1, 2)
    pad = torch.zeros(tiles, ng, 16, dtype=torch.uint8, device=dev)
    hdr = torch.cat([_as_bytes(sp.view(tiles * ng, LINEAR_NR)).view(tiles, ng, 32), zpp, pad], dim=2)
    body = torch.cat([hdr, data], dim=2).reshape(-1)
    head = _linear_header(_MAGIC_INT4, n, k, k, g, _int4_tile_bytes(k, g), dev)
    return torch.cat([head, body])


def unpack_linear_int4(packed: torch.Tensor, n: int, k: int, group_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_linear_int4``: nibbles uint8 ``[n, k]`` (0..15), ``scale`` float16
    ``[n, k // g]``, ``zero_point`` uint8 ``[n, k // g]``."""
    check_linear_group_size(group_size)
    _check_linear_header(packed, _MAGIC_INT4, n, k, group_size)
    g = group_size
    tiles, ng, bpg = _tiles(n), k // g, g // LINEAR_QK
    body = packed[_LINEAR_HEADER.size :].view(tiles, ng, _int4_tile_bytes(k, g) // ng)
    s = body[:, :, :32].contiguous().view(torch.float16)  # [tile, grp, row]
    zp = body[:, :, 32:48]
    data = body[:, :, 64:].reshape(tiles, ng, bpg, 4, LINEAR_NR, 4).permute(0, 4, 1, 2, 3, 5)
    u = torch.stack([data & 15, data >> 4], dim=4)  # [tile, row, grp, blk, half, quad, j]
    u = u.reshape(tiles * LINEAR_NR, k)[:n]
    s = s.permute(0, 2, 1).reshape(tiles * LINEAR_NR, ng)[:n]
    zp = zp.permute(0, 2, 1).reshape(tiles * LINEAR_NR, ng)[:n]
    return u, s, zp


def unpack_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical INT4 bytes ``[n, k // 2]`` -> nibbles ``[n, k]`` (even k in the low nibble)."""
    return torch.stack([qweight & 15, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)


def quantize_linear_activations(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations ``[m, k]`` -> ``xq`` (float32 holding ints in -127..127) ``[m, nb, 32]``,
    block scales ``d`` ``[m, nb]`` and block sums ``asum`` ``[m, nb]``; k is zero-padded to a
    multiple of 32. ``d = max|x| / 127``, ``xq = round_half_even(x / d)`` (0 where d == 0)."""
    if not bool(torch.isfinite(x2).all()):
        raise ValueError(
            "the input x contains NaN or Inf; the quantized Linear kernels quantize activations "
            "to int8 and need finite values (check the previous layer, or torch.nan_to_num)"
        )
    m, k = x2.shape
    kp = _round_up(k, LINEAR_QK)
    xf = torch.nn.functional.pad(x2.float(), (0, kp - k)).view(m, kp // LINEAR_QK, LINEAR_QK)
    d = xf.abs().amax(dim=-1) / 127.0
    dd = d.unsqueeze(-1)
    xq = torch.where(dd > 0, torch.round(xf / torch.where(dd > 0, dd, 1.0)), 0.0).clamp(-127, 127)
    return xq, d, xq.sum(dim=-1)


def linear_row_shift(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block scales ``d [m, nb]`` -> (``d * 2^-e`` per row, ``2^e`` float32 ``[m, 1]``).

    A row whose ``nb * max_b d[b]`` exceeds ``2^88`` (activations above ~2^95 / nb) could
    overflow float32 in ``sum_b d[b] * dot[b]`` even where its result is finite; its scales
    are divided by ``2^e`` (e = the exponent of that product - 88; exact, a power of two) and
    its result is multiplied by ``2^e`` before the bias is added. ``e = 0`` (and ``d``
    unchanged) for every ordinary row. Same rule as ``row_shift`` in csrc/linear.c."""
    nb = d.shape[-1]
    bound = d.amax(dim=-1, keepdim=True).double() * nb  # exact in float64
    e = torch.where(bound > 2.0**LINEAR_SHIFT_LIMIT_LOG2,
                    torch.frexp(bound).exponent.to(torch.int32) - LINEAR_SHIFT_LIMIT_LOG2, 0)
    return d * _pow2(-e), _pow2(e)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """``2^e`` as float32, built from its bits (exact; -126 <= e <= 127)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def _block_dots(xq: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """``dots[m, n, b] = sum_i xq[m, b, i] * wb[n, b, i]``: integers below 2^24, exact in f32."""
    return torch.einsum("mbi,nbi->mnb", xq, wb)


def _chunk_blocks(m: int, n: int, nb: int, multiple: int) -> int:
    per = max(1, _LINEAR_CHUNK_ELEMS // max(1, m * n))
    return max(multiple, per // multiple * multiple) if nb > per else nb


def linear_int8(x2: torch.Tensor, packed: torch.Tensor, n: int, k: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Twin of ``mq_linear_int8``: ``x2 [m, k]`` -> ``[m, n]`` in ``x2.dtype``."""
    packed = packed.to(x2.device)
    w, scale, zero = unpack_linear_int8(packed, n, k)
    xq, d, asum = quantize_linear_activations(x2)
    d, up = linear_row_shift(d)
    m, nb = d.shape
    kp = nb * LINEAR_QK
    wb = torch.nn.functional.pad(w.float(), (0, kp - k)).view(n, nb, LINEAR_QK)
    facc = torch.zeros(m, n, dtype=torch.float32, device=x2.device)
    step = _chunk_blocks(m, n, nb, 1)
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        facc += (_block_dots(xq[:, b0:b1], wb[:, b0:b1]) * d[:, None, b0:b1]).sum(dim=-1)
    S = (d * asum).sum(dim=-1, keepdim=True)
    y = scale * (facc - zero.float() * S) * up  # up == 1 (exact) for ordinary rows
    if bias is not None:
        y = y + bias.float()
    return y.to(x2.dtype)


def linear_int4(x2: torch.Tensor, packed: torch.Tensor, n: int, k: int, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Twin of ``mq_linear_int4``: ``x2 [m, k]`` -> ``[m, n]`` in ``x2.dtype``."""
    packed = packed.to(x2.device)
    u, scale, zp = unpack_linear_int4(packed, n, k, group_size)
    xq, d, asum = quantize_linear_activations(x2)
    d, up = linear_row_shift(d)
    m, nb = d.shape
    g = group_size
    ng, bpg = k // g, g // LINEAR_QK
    ub = u.float().view(n, nb, LINEAR_QK)
    sf, zf = scale.float(), zp.float()
    D = (d * asum).view(m, ng, bpg).sum(dim=-1)  # [m, ng]
    y = torch.zeros(m, n, dtype=torch.float32, device=x2.device)
    step = _chunk_blocks(m, n, nb, bpg)
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        j0, j1 = b0 // bpg, b1 // bpg
        bd = _block_dots(xq[:, b0:b1], ub[:, b0:b1]) * d[:, None, b0:b1]
        gacc = bd.view(m, n, j1 - j0, bpg).sum(dim=-1)
        y += (sf[None, :, j0:j1] * (gacc - zf[None, :, j0:j1] * D[:, None, j0:j1])).sum(dim=-1)
    y = y * up
    if bias is not None:
        y = y + bias.float()
    return y.to(x2.dtype)


def linear_error_scale(x2: torch.Tensor, packed: torch.Tensor, n: int, k: int,
                       group_size: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``A`` of the twin tolerance: the forward with every term replaced by its absolute
    value (``[m, n]``, float32). Paths agree within ``LINEAR_TWIN_RTOL * A`` + 1 ulp."""
    xq, d, asum = quantize_linear_activations(x2)
    d, up = linear_row_shift(d)
    m, nb = d.shape
    xa, asum_a = xq.abs(), asum.abs()
    if group_size == 0:
        w, scale, zero = unpack_linear_int8(packed.to(x2.device), n, k)
        kp = nb * LINEAR_QK
        wb = torch.nn.functional.pad(w.float().abs(), (0, kp - k)).view(n, nb, LINEAR_QK)
        acc = (_block_dots(xa, wb) * d[:, None, :]).sum(-1)
        a = scale.abs() * (acc + zero.float().abs() * (d * asum_a).sum(-1, keepdim=True))
    else:
        u, scale, zp = unpack_linear_int4(packed.to(x2.device), n, k, group_size)
        ng, bpg = k // group_size, group_size // LINEAR_QK
        bd = _block_dots(xa, u.float().view(n, nb, LINEAR_QK)) * d[:, None, :]
        gacc = bd.view(m, n, ng, bpg).sum(-1)
        D = (d * asum_a).view(m, ng, bpg).sum(-1)
        a = (scale.float()[None] * (gacc + zp.float()[None] * D[:, None, :])).sum(-1)
    a = a * up
    if bias is not None:
        a = a + bias.float().abs()
    return a


# ---------------------------------------------------------------------------------------------
# GPTQ (twin of csrc/gptq.c; contracts in csrc/mono_quant.h). The Hessian is the same sum in
# another order (float64, so it agrees to ~1e-15 relative); the column loop is the same float32
# operations in the same order, so it agrees bit for bit. The loop here is the unblocked one:
# the C kernel's lazy batches apply the same updates in the same order, only faster.
# ---------------------------------------------------------------------------------------------

GPTQ_GROUP_SIZES = (32, 64, 128, 256)


def gptq_hessian_add(x2: torch.Tensor, mask: torch.Tensor | None, h: torch.Tensor) -> int:
    """``h[i, j] += sum_r x2[r, i] * x2[r, j]`` for ``j >= i`` over the rows with a non-zero
    ``mask`` (all rows when None), in float64; ``h``'s lower triangle is left as it is.
    Returns the rows counted."""
    rows = x2 if mask is None else x2[mask.to(torch.bool)]
    check_finite(rows, "x")
    xd = rows.to(torch.float64)
    h.add_(torch.triu(xd.T @ xd))
    return int(rows.shape[0])


def gptq_int4(w: torch.Tensor, v: torch.Tensor, perm: torch.Tensor | None, scale: torch.Tensor,
              zero_point: torch.Tensor, group_size: int) -> torch.Tensor:
    """The GPTQ column loop of ``mq_gptq_int4``: ``w [n, k]`` float32 in processing order
    (column ``i`` is the layer's column ``perm[i]``), ``v`` upper triangular with ``v v^T`` the
    damped Hessian in that order, static groups ``scale`` / ``zero_point`` ``[n, k // group_size]``
    in the layer's order. Returns ``qweight`` uint8 ``[n, k // 2]`` in the layer's column order."""
    n, k = w.shape
    _gptq_check(w, v, perm, scale, zero_point, k)
    order = torch.arange(k, device=w.device) if perm is None else perm.to(w.device)
    w = w.float()
    v = v.float()
    s = scale.float()[:, order // group_size]  # [n, k] in processing order
    z = zero_point.float()[:, order // group_size]
    acc = torch.zeros_like(w)
    nibbles = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    for i in range(k):
        target = w[:, i] + acc[:, i] / v[i, i]
        level = torch.round(torch.clamp(target / s[:, i], -z[:, i], 15.0 - z[:, i]))
        nibbles[:, i] = (level + z[:, i]).to(torch.uint8)
        err = w[:, i] - level * s[:, i]
        if i + 1 < k:
            acc[:, i + 1:] += err[:, None] * v[i, i + 1:]
    out = torch.empty_like(nibbles)
    out[:, order] = nibbles
    return int4_pack(out)


def _gptq_check(w: torch.Tensor, v: torch.Tensor, perm: torch.Tensor | None, scale: torch.Tensor,
                zero_point: torch.Tensor, k: int) -> None:
    """The value checks of ``mq_gptq_int4``, with its error messages."""
    s = scale.float()
    upper = torch.triu(v.float())
    if not bool((torch.isfinite(s) & (s > 0)).all()) or bool((zero_point > 15).any()):
        raise ValueError(_GPTQ_ARG_MESSAGE)
    if not bool(torch.isfinite(w).all()) or not bool(torch.isfinite(upper).all()):
        raise ValueError("gptq_int4: NaN or Inf in the layer's inputs, weight or Hessian factor; "
                         "GPTQ needs finite values (check the calibration data and the model's activations)")
    if not bool((torch.diagonal(upper) > 0).all()):
        raise ValueError(_GPTQ_ARG_MESSAGE)
    if perm is not None and not torch.equal(torch.sort(perm.to(torch.int64)).values,
                                            torch.arange(k, device=perm.device)):
        raise ValueError(_GPTQ_ARG_MESSAGE)


_GPTQ_ARG_MESSAGE = ("gptq_int4: an argument is out of range (group_size one of 32, 64, 128, 256; "
                     "block_size >= 1; scales finite and > 0; zero points 0..15; v[i][i] > 0; "
                     "perm a permutation of 0..k-1)")


# ---------------------------------------------------------------------------------------------
# Embeddings: per-row INT8 tables, gather and bags (csrc/embedding.c).
# ---------------------------------------------------------------------------------------------

EMBEDDING_MODES = {"sum": 0, "mean": 1, "max": 2}  # mq_embedding_mode


def _check_embedding_indices(idx: torch.Tensor, rows: int) -> None:
    if idx.numel() and not bool(((idx >= 0) & (idx < rows)).all()):
        raise IndexError("embedding: index out of range in self (every index must be >= 0 and < the table's "
                         "num_embeddings)")


def _embedding_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rows ``r`` of the table as float32: ``float(q - zero_point) * scale``, one rounding."""
    w = q.index_select(0, r).to(torch.int32) - zero_point.index_select(0, r).to(torch.int32).unsqueeze(1)
    return w.float() * scale.index_select(0, r).float().unsqueeze(1)


def embedding_int8_gather(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                          idx: torch.Tensor) -> torch.Tensor:
    """Twin of ``mq_embedding_int8_gather``: the rows ``idx`` (int64 ``[n]``) of the table
    ``q [rows, dim]``, dequantized, float32 ``[n, dim]``."""
    _check_embedding_indices(idx, q.shape[0])
    return _embedding_rows(q, scale, zero_point, idx)


def embedding_int8_bag(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, idx: torch.Tensor,
                       offsets: torch.Tensor, per_sample_weights: torch.Tensor | None, mode: str,
                       padding_idx: int) -> torch.Tensor:
    """Twin of ``mq_embedding_int8_bag``: float32 ``[bags, dim]``, bag ``b`` reducing the rows
    ``idx[offsets[b]:offsets[b + 1]]`` (``offsets`` int64 ``[bags + 1]``) in index order,
    rows equal to ``padding_idx`` (-1: none) skipped. Step ``j`` handles the j-th row of
    every bag at once, so each bag's sum runs in the C kernel's order."""
    bags, dim = offsets.numel() - 1, q.shape[1]
    if bool(offsets[0] < 0) or bool(offsets[-1] > idx.numel()) or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must be non-decreasing and within [0, {idx.numel()}] (the number of indices)")
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    if bags:
        _check_embedding_indices(idx[int(offsets[0]):int(offsets[-1])], q.shape[0])
    acc = torch.zeros(bags, dim, dtype=torch.float32, device=q.device)
    count = torch.zeros(bags, 1, dtype=torch.int64, device=q.device)
    longest = int(lengths.max()) if bags else 0
    for j in range(longest):
        active = lengths > j
        pos = torch.where(active, starts + j, torch.zeros_like(starts))
        r = idx[pos]
        take = (active & (r != padding_idx)).unsqueeze(1)
        rows = _embedding_rows(q, scale, zero_point, torch.where(take.squeeze(1), r, torch.zeros_like(r)))
        if mode == "max":
            new = torch.where(count == 0, rows, torch.maximum(acc, rows))
        else:
            new = acc + (rows if per_sample_weights is None else rows * per_sample_weights[pos].float().unsqueeze(1))
        acc = torch.where(take, new, acc)
        count = count + take
    if mode == "mean":
        acc = torch.where(count > 0, acc / count.clamp_min(1).float(), acc)
    return acc
