"""INT4 group-wise kernels: C against the torch reference bit for bit, the nibble layout,
round trips, thread-count invariance, error messages and the MSE scale search."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mono_quant import _kernels as K
from mono_quant import _reference as ref

GROUP_SIZES = (32, 64, 128, 256)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
METHODS = ("absmax", "mse")


def quantize_both(w, group_size=128, symmetric=True, scale_method="mse"):
    """The C and reference results of the same call, asserted bit-identical."""
    if not K.c_available():
        pytest.skip("the C extension mono_quant._C is not built")
    with K.use_backend("c"):
        c = K.int4_quantize(w, group_size, symmetric, scale_method)
    with K.use_backend("reference"):
        r = K.int4_quantize(w, group_size, symmetric, scale_method)
    assert_same_bits(c, r)
    return c


def assert_same_bits(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.dtype == torch.float16:
            x, y = x.view(torch.int16), y.view(torch.int16)
        assert torch.equal(x, y), f"{(x != y).sum()} of {x.numel()} elements differ"


def special_rows(k: int, group_size: int) -> torch.Tensor:
    """Rows whose groups are the edge cases: zeros, one sign only, huge, tiny, denormal, ties."""
    rows = [
        torch.zeros(k),
        torch.rand(k) + 0.5,  # positive only
        -torch.rand(k) - 0.5,  # negative only
        torch.randn(k).clamp(-3, 3) * 1e38,  # near the float32 maximum
        torch.randn(k) * 1e-40,  # float32 denormals
        torch.randn(k) * 1e-6,  # scale below the fp16 normal range
        torch.randn(k) * 1e6,  # scale above the fp16 maximum
        torch.arange(k, dtype=torch.float32) % 16 - 7.5,  # exact halves: ties to even
        torch.full((k,), -2.0),
    ]
    mixed = torch.randn(k)
    mixed[:group_size] = 0.0  # an all-zero group next to normal ones
    mixed[group_size - 1] = -0.0
    rows.append(mixed)
    outlier = torch.randn(k)
    outlier[3] = 1000.0
    rows.append(outlier)
    return torch.stack(rows)


# ---- C == reference ------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_method", METHODS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_c_matches_reference(group_size, symmetric, scale_method, dtype):
    for n, groups in ((1, 1), (3, 2), (5, 3)):
        w = (torch.randn(n, groups * group_size) * 0.05).to(dtype)
        quantize_both(w, group_size, symmetric, scale_method)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_method", METHODS)
def test_c_matches_reference_on_special_values(group_size, symmetric, scale_method):
    w = special_rows(2 * group_size, group_size)
    q, scale, zp = quantize_both(w, group_size, symmetric, scale_method)
    assert bool((scale.float() > 0).all()) and bool(torch.isfinite(scale).all())
    for dtype in (torch.float16, torch.bfloat16):
        quantize_both(w.clamp(-6e4, 6e4).to(dtype), group_size, symmetric, scale_method)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dequantize_c_matches_reference(symmetric, dtype):
    w = special_rows(256, 64)
    q = quantize_both(w, 64, symmetric)
    if not K.c_available():
        pytest.skip("the C extension mono_quant._C is not built")
    with K.use_backend("c"):
        c = K.int4_dequantize(*q, group_size=64, out_dtype=dtype)
    with K.use_backend("reference"):
        r = K.int4_dequantize(*q, group_size=64, out_dtype=dtype)
    assert c.dtype == dtype and torch.equal(c.view(torch.uint8), r.view(torch.uint8))


# ---- format --------------------------------------------------------------------------------


def test_nibble_layout_hand_written(backend):
    # amax 7 -> scale 1, zero point 8: nibble = w + 8; element 2i in the low nibble of byte i
    w = torch.zeros(1, 32)
    w[0, :6] = torch.tensor([-7.0, 7.0, 1.0, -2.0, 0.0, 3.0])
    q, scale, zp = K.int4_quantize(w, group_size=32, symmetric=True, scale_method="absmax")
    assert q.shape == (1, 16) and scale.shape == (1, 1) and zp.shape == (1, 1)
    assert q[0, :4].tolist() == [0xF1, 0x69, 0xB8, 0x88]
    assert scale.item() == 1.0 and zp.item() == 8
    assert K.int4_pack(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8)).tolist() == [[0x21, 0x43]]
    assert K.int4_unpack(torch.tensor([[0x21, 0xF0]], dtype=torch.uint8)).tolist() == [[1, 2, 0, 15]]


def test_asymmetric_hand_written(backend):
    # range [0, 15] -> scale 1, zero point 0: nibble = w
    w = torch.arange(32, dtype=torch.float32).reshape(1, 32) % 16
    q, scale, zp = K.int4_quantize(w, group_size=32, symmetric=False, scale_method="absmax")
    assert scale.item() == 1.0 and zp.item() == 0
    assert torch.equal(K.int4_unpack(q), w.to(torch.uint8))
    # range [-3, 12] -> zero point 3
    q, scale, zp = K.int4_quantize(w - 3, group_size=32, symmetric=False, scale_method="absmax")
    assert scale.item() == 1.0 and zp.item() == 3
    assert torch.equal(K.int4_dequantize(q, scale, zp, 32), w - 3)


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_group_gets_a_valid_scale_and_decodes_to_zero(backend, symmetric):
    w = torch.zeros(2, 64)
    q, scale, zp = K.int4_quantize(w, group_size=32, symmetric=symmetric)
    assert bool((scale == 2.0**-24).all())
    assert torch.equal(K.int4_dequantize(q, scale, zp, 32), w)


def test_huge_and_tiny_scales_are_clamped_to_fp16(backend):
    w = torch.tensor([[1e9] + [0.0] * 31, [1e-12] + [0.0] * 31])
    q, scale, zp = K.int4_quantize(w, group_size=32, scale_method="absmax")
    assert scale[:, 0].tolist() == [65504.0, 2.0**-24]
    assert K.int4_unpack(q)[0, 0] == 15  # the huge value saturates at level +7


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_absmax_error_is_at_most_half_a_step(backend, group_size, symmetric):
    w = torch.randn(4, 2 * group_size)
    q, scale, zp = K.int4_quantize(w, group_size, symmetric, "absmax")
    w_hat = K.int4_dequantize(q, scale, zp, group_size)
    step = scale.float().repeat_interleave(group_size, dim=1)
    # half a step, plus what rounding the scale to fp16 (2^-11 relative) moves the range ends
    assert bool(((w - w_hat).abs() <= step * (0.5 + 16 * 2.0**-11)).all())


def test_float64_input_quantizes_as_float32(backend):
    w = torch.randn(3, 64, dtype=torch.float64)
    assert_same_bits(K.int4_quantize(w, 32), K.int4_quantize(w.float(), 32))


def test_non_contiguous_and_empty_inputs(backend):
    w = torch.randn(64, 6)
    assert_same_bits(K.int4_quantize(w.t(), 32), K.int4_quantize(w.t().contiguous(), 32))
    q, scale, zp = K.int4_quantize(torch.empty(0, 64), 32)
    assert q.shape == (0, 32) and scale.shape == (0, 2) and zp.shape == (0, 2)
    assert K.int4_dequantize(q, scale, zp, 32).shape == (0, 64)


# ---- round trips ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), half=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       backend_name=st.sampled_from(["c", "reference"]))
def test_pack_unpack_round_trip(n, half, seed, backend_name):
    if backend_name == "c" and not K.c_available():
        return
    gen = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (n, half), dtype=torch.uint8, generator=gen)
    nibbles = torch.randint(0, 16, (n, 2 * half), dtype=torch.uint8, generator=gen)
    with K.use_backend(backend_name):
        assert torch.equal(K.int4_pack(K.int4_unpack(packed)), packed)
        assert torch.equal(K.int4_unpack(K.int4_pack(nibbles)), nibbles)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), groups=st.integers(1, 3), group_size=st.sampled_from(GROUP_SIZES),
       log_scale=st.floats(-20, 12), seed=st.integers(0, 2**31 - 1))
def test_requantizing_a_dequantized_weight_is_exact(n, groups, group_size, log_scale, seed):
    """Symmetric absmax on a decoded weight finds the same scales and nibbles again: amax
    decodes to exactly 7 * scale (C and reference)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, groups * group_size, generator=gen) * math.exp(log_scale)
    q, scale, zp = quantize_both(w, group_size, True, "absmax")
    if not bool(((scale > 2.0**-14) & (scale < 60000)).all()):
        return  # subnormal or saturated scales need not reproduce themselves
    w_hat = K.int4_dequantize(q, scale, zp, group_size)
    assert_same_bits(quantize_both(w_hat, group_size, True, "absmax"), (q, scale, zp))


# ---- threads -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_method", METHODS)
def test_results_do_not_depend_on_the_thread_count(backend, scale_method):
    w = torch.randn(96, 1024)  # 96 rows of 1024: enough for several threads
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.int4_quantize(w, 64, True, scale_method)
        one_hat = K.int4_dequantize(*one, group_size=64)
        torch.set_num_threads(2)
        two = K.int4_quantize(w, 64, True, scale_method)
        two_hat = K.int4_dequantize(*two, group_size=64)
    finally:
        torch.set_num_threads(saved)
    assert_same_bits(one, two)
    assert torch.equal(one_hat, two_hat)


# ---- errors --------------------------------------------------------------------------------


def test_error_messages(backend):
    w = torch.randn(4, 256)
    with pytest.raises(ValueError, match=r"^group_size must be one of 32, 64, 128, 256; got 100$"):
        K.int4_quantize(w, group_size=100)
    with pytest.raises(ValueError, match=r"in_features \(96\) must be a multiple of group_size \(128\); "
                                         r"use group_size=32 \(divides 96\)"):
        K.int4_quantize(torch.randn(4, 96), group_size=128)
    with pytest.raises(ValueError, match="no INT4 group size divides it"):
        K.int4_quantize(torch.randn(4, 100), group_size=32)
    with pytest.raises(ValueError, match="scale_method must be one of 'absmax', 'mse'; got 'l2'"):
        K.int4_quantize(w, scale_method="l2")
    with pytest.raises(TypeError, match="floating-point weight .* got torch.int32"):
        K.int4_quantize(w.to(torch.int32))
    with pytest.raises(ValueError, match="2-D weight"):
        K.int4_quantize(w.reshape(-1))
    for bad in (math.nan, math.inf, -math.inf):
        w_bad = w.clone()
        w_bad[3, 200] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.int4_quantize(w_bad)


def test_dequantize_and_pack_errors(backend):
    q, scale, zp = K.int4_quantize(torch.randn(4, 256), 128)
    with pytest.raises(TypeError, match="scale must be torch.float16"):
        K.int4_dequantize(q, scale.float(), zp, 128)
    with pytest.raises(ValueError, match=r"scale must have shape \[4, 4\]"):
        K.int4_dequantize(q, scale, zp, 64)
    with pytest.raises(ValueError, match="must be a multiple of group_size"):
        K.int4_dequantize(q[:, :48], scale, zp, 64)
    with pytest.raises(TypeError, match="qweight must be a uint8 tensor"):
        K.int4_dequantize(q.to(torch.int8), scale, zp, 128)
    bad_zp = zp.clone()
    bad_zp[0, 0] = 16
    with pytest.raises(ValueError, match="zero_point at most 15"):
        K.int4_dequantize(q, scale, bad_zp, 128)
    bad_scale = scale.clone()
    bad_scale[1, 1] = -1.0
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        K.int4_dequantize(q, bad_scale, zp, 128)
    with pytest.raises(ValueError, match="nibbles must be 0..15"):
        K.int4_pack(torch.tensor([[1, 16]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="even number of columns"):
        K.int4_pack(torch.zeros(1, 3, dtype=torch.uint8))


@pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")
def test_c_module_checks_its_arguments():
    from mono_quant import _C

    w = torch.randn(2, 64)
    q = torch.empty(2, 32, dtype=torch.uint8)
    s = torch.empty(2, 2, dtype=torch.float16)
    z = torch.empty(2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="group_size must be one of"):
        _C.int4_quantize(w.__dlpack__(), q.__dlpack__(), s.__dlpack__(), z.__dlpack__(), 48, True, 1, 1)
    with pytest.raises(ValueError, match=r"'out_scale' must have shape \[2, 1\]"):
        _C.int4_quantize(w.__dlpack__(), q.__dlpack__(), s.__dlpack__(), z.__dlpack__(), 64, True, 1, 1)
    with pytest.raises(TypeError, match="'out_scale' has dtype float32"):
        _C.int4_quantize(w.__dlpack__(), q.__dlpack__(), s.float().__dlpack__(), z.__dlpack__(), 32, True, 1, 1)
    with pytest.raises(ValueError, match="method must be"):
        _C.int4_quantize(w.__dlpack__(), q.__dlpack__(), s.__dlpack__(), z.__dlpack__(), 32, True, 7, 1)


# ---- the scale search ----------------------------------------------------------------------


def group_errors(w, q, scale, zp, group_size):
    """Squared error per group, in float64."""
    d = (w.double() - K.int4_dequantize(q, scale, zp, group_size).double()) ** 2
    return d.reshape(w.shape[0], -1, group_size).sum(-1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_gains_over_absmax_and_never_loses_a_group(backend, symmetric):
    w = torch.randn(1024, 1024)
    absmax = K.int4_quantize(w, 128, symmetric, "absmax")
    mse = K.int4_quantize(w, 128, symmetric, "mse")
    db_absmax = K.sqnr(w, K.int4_dequantize(*absmax, group_size=128))
    db_mse = K.sqnr(w, K.int4_dequantize(*mse, group_size=128))
    assert db_mse - db_absmax >= (1.0 if symmetric else 0.3)
    if symmetric:
        assert db_absmax == pytest.approx(18.6, abs=0.1)
    e_absmax = group_errors(w, *absmax, 128)
    e_mse = group_errors(w, *mse, 128)
    # The search compares float32 tree sums; float64 sums may differ by rounding only.
    assert bool((e_mse <= e_absmax * (1 + 1e-5)).all())
    same = mse[1] == absmax[1]
    assert torch.equal(e_mse[same], e_absmax[same])


@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_mse_never_loses_on_hard_groups(backend, group_size):
    w = special_rows(2 * group_size, group_size)
    w = w[torch.isfinite(w.pow(2).sum(1))]  # rows whose float64 error is finite
    for symmetric in (True, False):
        absmax = K.int4_quantize(w, group_size, symmetric, "absmax")
        mse = K.int4_quantize(w, group_size, symmetric, "mse")
        e_absmax = group_errors(w, *absmax, group_size)
        e_mse = group_errors(w, *mse, group_size)
        assert bool((e_mse <= e_absmax * (1 + 1e-5)).all())

