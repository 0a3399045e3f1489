"""Pure-torch twin of every C kernel.

These functions define the exact arithmetic the C kernels must reproduce: the tests compare
the two bit for bit, and tensors the C side cannot take (CUDA, other devices) run here.
All math is done in float32 in the same order as the C code, so results agree exactly.

Layout convention shared with ``csrc/mono_quant.h``: a tensor quantized per channel along
``axis`` is viewed as ``[outer, channels, inner]``; per-tensor is ``channels == 1``.
"""

from __future__ import annotations

import math

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
    acc = xs @ ws.T
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
