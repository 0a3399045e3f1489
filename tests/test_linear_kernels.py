"""The quantized Linear kernels (INT8 per-channel, INT4 group-wise) on every path this CPU has.

Each C path (portable, avx2, avx512_vnni) is forced in turn and compared with the torch twin
``_reference.linear_int*`` (same activation quantization, exact integer block dot products)
within the documented tight tolerance, and with float math on the dequantized weight within
the bound that activation rounding implies (see ``_reference`` LINEAR section and
``csrc/mono_quant.h``):

    twin:  |y - y_twin| <= LINEAR_TWIN_RTOL * A + 1 ulp of the output dtype
    float: |y - x . w_hat| <= sum_b (d_b / 2) * sum_{k in b} |w_hat[n, k]| + the twin bound
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mono_quant import _kernels as K
from mono_quant import _reference as R

pytestmark = pytest.mark.skipif(not K.c_available(), reason="mono_quant._C is not built")

ISAS = K.linear_isas()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GROUPS = (32, 64, 128, 256)
# relative size of one unit in the last place, by output dtype (float32 gets a little slack)
ULP = {torch.float32: 2.0**-22, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


# ---- canonical weights --------------------------------------------------------------------


def make_int8(n: int, k: int, symmetric: bool, gen: torch.Generator):
    """Canonical INT8: int8 + zero point 0, or uint8 + zero points anywhere in 0..255."""
    scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
    if symmetric:
        q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        zp = torch.zeros(n, dtype=torch.int32)
    else:
        q = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.uint8)
        zp = torch.randint(0, 256, (n,), generator=gen, dtype=torch.int32)
    return q, scale, zp


def dequant_int8(q, scale, zp):
    return (q.double() - zp.double()[:, None]) * scale.double()[:, None]


def make_int4(n: int, k: int, g: int, symmetric: bool, gen: torch.Generator):
    """Canonical INT4 (docs/design.md): nibble k in byte k // 2, even k low."""
    nib = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    q = (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous()
    scale = (torch.rand(n, k // g, generator=gen) * 0.05 + 1e-3).half()
    if symmetric:
        zp = torch.full((n, k // g), 8, dtype=torch.uint8)
    else:
        zp = torch.randint(0, 16, (n, k // g), generator=gen, dtype=torch.uint8)
    return q, scale, zp


def dequant_int4(q, scale, zp, g):
    n = q.shape[0]
    nib = R.unpack_nibbles(q).double().view(n, -1, g)
    return ((nib - zp.double()[..., None]) * scale.double()[..., None]).view(n, -1)


# ---- checks -------------------------------------------------------------------------------


def twin_bound(x2, packed, n, k, g, bias, y_twin):
    a = R.linear_error_scale(x2, packed, n, k, g, bias).double()
    return R.LINEAR_TWIN_RTOL * a + ULP[x2.dtype] * y_twin.double().abs() + 1e-30


def check(y, x, packed, w_hat, n, k, g=0, bias=None):
    """y (from some path) against the twin (tight) and float math (activation rounding)."""
    x2 = x.reshape(-1, k)
    y2 = y.reshape(-1, n).double()
    with K.use_backend("reference"):
        y_twin = (K.linear_int4(x, packed, n, k, g, bias) if g else
                  K.linear_int8(x, packed, n, k, bias)).reshape(-1, n)
    tb = twin_bound(x2, packed, n, k, g, bias, y_twin)
    err = (y2 - y_twin.double()).abs()
    assert bool((err <= tb).all()), f"twin: worst excess {(err - tb).max().item():.3g}"
    # float: each activation moves by at most d_b / 2 when rounded to int8
    _, d, _ = R.quantize_linear_activations(x2)
    m, nb = d.shape
    kp = nb * R.LINEAR_QK
    wabs = torch.nn.functional.pad(w_hat.abs(), (0, kp - k)).view(n, nb, R.LINEAR_QK).sum(-1)
    act_bound = 0.5 * (1 + 1e-5) * d.double() @ wabs.T
    exact = x2.double() @ w_hat.T + (0 if bias is None else bias.double())
    err = (y2 - exact).abs()
    fb = act_bound + tb + ULP[x2.dtype] * exact.abs()
    assert bool((err <= fb).all()), f"float: worst excess {(err - fb).max().item():.3g}"


def run(isa, fn, *args, **kwargs):
    with K.use_linear_isa(isa):
        return fn(*args, **kwargs)


SHAPES = [(1, 1), (1, 31), (17, 33), (16, 64), (33, 100), (5, 200), (40, 96)]
BATCHES = [(1,), (3,), (7,), (64,), (2, 3)]


# ---- dispatch -----------------------------------------------------------------------------


def test_paths_reported():
    feats = K.cpu_features()
    assert ISAS[0] == "portable"
    assert feats["linear_kernel"] == ISAS[-1]  # the best one is picked by default
    if feats["avx2"]:
        assert "avx2" in ISAS
    if feats["avx512_vnni"]:
        assert "avx512_vnni" in ISAS
    for isa in ISAS:
        with K.use_linear_isa(isa):
            assert K.linear_isa() == isa
    assert K.linear_isa() == ISAS[-1]


def test_unknown_or_unsupported_path_refused():
    with pytest.raises(ValueError, match="cannot run here"):
        with K.use_linear_isa("sse9"):
            pass
    assert K.linear_isa() == ISAS[-1]


def test_disable_simd_forces_portable():
    code = (
        "from mono_quant import _kernels as K, _C\n"
        "print(K.linear_isa(), K.linear_isas())\n"
        "try:\n    _C.set_linear_isa('avx2'); print('accepted')\n"
        "except ValueError:\n    print('refused')\n"
    )
    env = {**os.environ, "MONO_QUANT_DISABLE_SIMD": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["portable ['portable']", "refused"]


# ---- packing ------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 33), (40, 96)])
def test_pack_int8_matches_twin_and_round_trips(n, k, symmetric):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    q, scale, zp = make_int8(n, k, symmetric, gen)
    packed = K.pack_linear_int8(q, scale, zp)
    assert packed.dtype == torch.uint8 and packed.numel() == R.linear_int8_packed_size(n, k)
    with K.use_backend("reference"):
        assert torch.equal(packed, K.pack_linear_int8(q, scale, zp))
    w, s, z = R.unpack_linear_int8(packed, n, k)
    center = 0 if symmetric else 128
    assert torch.equal(w, q.to(torch.int16) - center)
    assert torch.equal(s, scale) and torch.equal(z, zp - center)


@pytest.mark.parametrize("g", GROUPS)
@pytest.mark.parametrize("n", [1, 16, 21])
def test_pack_int4_matches_twin_and_round_trips(n, g):
    gen = torch.Generator().manual_seed(n * 7 + g)
    q, scale, zp = make_int4(n, 2 * g, g, False, gen)
    packed = K.pack_linear_int4(q, scale, zp, g)
    assert packed.numel() == R.linear_int4_packed_size(n, 2 * g, g)
    with K.use_backend("reference"):
        assert torch.equal(packed, K.pack_linear_int4(q, scale, zp, g))
    u, s, z = R.unpack_linear_int4(packed, n, 2 * g, g)
    assert torch.equal(u, R.unpack_nibbles(q)) and torch.equal(s, scale) and torch.equal(z, zp)


# ---- forward ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_int8_forward(isa, dtype, symmetric, with_bias):
    gen = torch.Generator().manual_seed(1)
    for i, (n, k) in enumerate(SHAPES):
        q, scale, zp = make_int8(n, k, symmetric, gen)
        packed = K.pack_linear_int8(q, scale, zp)
        w_hat = dequant_int8(q, scale, zp)
        bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
        batch = BATCHES[i % len(BATCHES)]
        x = (torch.randn(*batch, k, generator=gen) * 3).to(dtype)
        y = run(isa, K.linear_int8, x, packed, n, k, bias)
        assert y.shape == (*batch, n) and y.dtype == dtype
        check(y, x, packed, w_hat, n, k, 0, bias)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_int4_forward(isa, dtype, symmetric, with_bias):
    gen = torch.Generator().manual_seed(2)
    cases = [(1, 32, 32), (17, 64, 32), (16, 128, 64), (33, 384, 128), (5, 256, 256), (40, 512, 128)]
    for i, (n, k, g) in enumerate(cases):
        q, scale, zp = make_int4(n, k, g, symmetric, gen)
        packed = K.pack_linear_int4(q, scale, zp, g)
        w_hat = dequant_int4(q, scale, zp, g)
        bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
        batch = BATCHES[i % len(BATCHES)]
        x = torch.randn(*batch, k, generator=gen).to(dtype)
        y = run(isa, K.linear_int4, x, packed, n, k, g, bias)
        assert y.shape == (*batch, n) and y.dtype == dtype
        check(y, x, packed, w_hat, n, k, g, bias)


@pytest.mark.parametrize("isa", ISAS)
def test_every_group_size_and_batch(isa):
    gen = torch.Generator().manual_seed(3)
    for g in GROUPS:
        n, k = 19, 2 * g
        q, scale, zp = make_int4(n, k, g, False, gen)
        packed = K.pack_linear_int4(q, scale, zp, g)
        w_hat = dequant_int4(q, scale, zp, g)
        for m in (1, 2, 4, 5, 8, 9):
            x = torch.randn(m, k, generator=gen)
            check(run(isa, K.linear_int4, x, packed, n, k, g), x, packed, w_hat, n, k, g)


@pytest.mark.parametrize("isa", ISAS)
def test_long_rows_and_mixed_magnitudes(isa):
    """k = 4100 (not a multiple of 32) with blocks spanning 1e-30 .. 1e4, and zero blocks."""
    gen = torch.Generator().manual_seed(4)
    n, k = 20, 4100
    q, scale, zp = make_int8(n, k, False, gen)
    packed = K.pack_linear_int8(q, scale, zp)
    x = torch.randn(3, k, generator=gen)
    x[0, :64] *= 1e-30
    x[1, 100:200] = 0
    x[2, 1000:1032] *= 1e4
    check(run(isa, K.linear_int8, x, packed, n, k), x, packed, dequant_int8(q, scale, zp), n, k)
    q4, s4, z4 = make_int4(n, 4096, 128, True, gen)
    p4 = K.pack_linear_int4(q4, s4, z4, 128)
    x4 = x[:, :4096].contiguous()
    check(run(isa, K.linear_int4, x4, p4, n, 4096, 128), x4, p4, dequant_int4(q4, s4, z4, 128), n, 4096, 128)


# ---- activations at the top of each float range -------------------------------------------
#
# Rows whose float32 sums would overflow run scaled by a power of two (csrc/linear.h): the
# result is finite wherever float math is, every path agrees with the twin, and ordinary rows
# are bit for bit what they were.

def edge_rows(dtype, k, gen, issue_value):
    """Rows at the top of ``dtype``'s range, mixed with ordinary ones, as ``dtype``."""
    top = torch.finfo(dtype).max
    sign = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0)
    rows = [
        sign * top,                                          # every value at the maximum
        torch.randn(k, generator=gen),                       # an ordinary row between them
        (torch.rand(k, generator=gen) * 2 - 1) * top,        # anywhere up to the maximum
        torch.cat([sign[:32] * top, torch.randn(k - 32, generator=gen) * 1e-30]),  # one huge block
        sign * min(issue_value, top),                        # the values of the report
        torch.randn(k, generator=gen) * 1e3,
    ]
    return torch.stack(rows).to(dtype)


def small_int8(n, k, symmetric, gen):
    """INT8 weights with sum_k |w_hat[n, k]| <= 0.5: results stay below the input's maximum."""
    q, _, zp = make_int8(n, k, symmetric, gen)
    return q, torch.rand(n, generator=gen) * (0.5 / (256 * k)) + 1e-12, zp


def small_int4(n, k, g, symmetric, gen):
    q, _, zp = make_int4(n, k, g, symmetric, gen)
    return q, (torch.rand(n, k // g, generator=gen) * (0.5 / (16 * k)) + 1e-7).half(), zp


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_activations_at_the_top_of_the_range_stay_finite(isa, dtype):
    gen = torch.Generator().manual_seed(11)
    for n, k in [(17, 64), (5, 100), (33, 2048)]:
        for symmetric in (True, False):
            q, scale, zp = small_int8(n, k, symmetric, gen)
            packed = K.pack_linear_int8(q, scale, zp)
            bias = torch.randn(n, generator=gen).to(dtype)
            x = edge_rows(dtype, k, gen, 1e37)
            for rows in (x, x[:1], x[4:5]):  # batched (gemm) and one row (gemv) paths
                y = run(isa, K.linear_int8, rows, packed, n, k, bias)
                assert bool(torch.isfinite(y).all()), f"INT8 k={k}: {y}"
                check(y, rows, packed, dequant_int8(q, scale, zp), n, k, 0, bias)
    for n, k, g in [(17, 64, 32), (5, 256, 128), (20, 2048, 64)]:
        q, scale, zp = small_int4(n, k, g, False, gen)
        packed = K.pack_linear_int4(q, scale, zp, g)
        x = edge_rows(dtype, k, gen, 4e37)
        for rows in (x, x[:1], x[4:5]):
            y = run(isa, K.linear_int4, rows, packed, n, k, g, None)
            assert bool(torch.isfinite(y).all()), f"INT4 k={k}: {y}"
            check(y, rows, packed, dequant_int4(q, scale, zp, g), n, k, g)


@pytest.mark.parametrize("isa", ISAS)
def test_ordinary_rows_are_unchanged_by_a_huge_row_in_the_batch(isa):
    gen = torch.Generator().manual_seed(12)
    n, k, g = 40, 256, 64
    p8 = K.pack_linear_int8(*make_int8(n, k, False, gen))
    p4 = K.pack_linear_int4(*make_int4(n, k, g, False, gen), g)
    bias = torch.randn(n, generator=gen)
    x = torch.randn(7, k, generator=gen)
    huge = x.clone()
    huge[2] = 3e38  # this row runs scaled; the others must not move by one bit
    for fn, args in ((K.linear_int8, (p8, n, k, bias)), (K.linear_int4, (p4, n, k, g, bias))):
        before, after = run(isa, fn, x, *args), run(isa, fn, huge, *args)
        keep = [0, 1, 3, 4, 5, 6]
        assert torch.equal(after[keep], before[keep])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_results_beyond_the_output_range_are_inf_as_in_float_math(isa, dtype):
    gen = torch.Generator().manual_seed(13)
    n, k, g = 24, 128, 32
    top = torch.finfo(dtype).max
    q, scale, zp = make_int8(n, k, True, gen)  # sum_k |w_hat| up to ~170: many results overflow
    q4, s4, z4 = make_int4(n, k, g, False, gen)
    x = torch.stack([torch.where(torch.rand(k, generator=gen) < 0.5, -top, top),
                     torch.randn(k, generator=gen) * (top / 1e4)]).to(dtype)
    for y, w_hat in ((run(isa, K.linear_int8, x, K.pack_linear_int8(q, scale, zp), n, k), dequant_int8(q, scale, zp)),
                     (run(isa, K.linear_int4, x, K.pack_linear_int4(q4, s4, z4, g), n, k, g),
                      dequant_int4(q4, s4, z4, g))):
        exact = x.double() @ w_hat.T
        beyond, inside = exact.abs() > top * 1.01, exact.abs() < top * 0.99
        assert bool(beyond.any()) and bool(inside.any())
        assert bool(torch.isinf(y[beyond]).all()) and torch.equal(y[beyond].sign().double(), exact[beyond].sign())
        assert bool(torch.isfinite(y[inside]).all())


@pytest.mark.parametrize("isa", ISAS)
def test_zero_input_gives_bias(isa):
    n, k = 18, 64
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(n, generator=gen)
    x = torch.zeros(2, k)
    packed = K.pack_linear_int8(*make_int8(n, k, False, gen))
    assert torch.equal(run(isa, K.linear_int8, x, packed, n, k, bias), bias.expand(2, n))
    p4 = K.pack_linear_int4(*make_int4(n, k, 32, False, gen), 32)
    assert torch.equal(run(isa, K.linear_int4, x, p4, n, k, 32, bias), bias.expand(2, n))


def test_empty_batch_and_strided_input():
    gen = torch.Generator().manual_seed(6)
    n, k = 9, 40
    packed = K.pack_linear_int8(*make_int8(n, k, True, gen))
    assert K.linear_int8(torch.zeros(0, k), packed, n, k).shape == (0, n)
    xt = torch.randn(k, 6, generator=gen).t()  # not contiguous
    assert torch.equal(K.linear_int8(xt, packed, n, k), K.linear_int8(xt.contiguous(), packed, n, k))


def assert_thread_count_free(run_fn, isa: str, batch: int, seed: int) -> None:
    """INT8 and INT4 outputs of a 200x1024 layer (enough tiles for several threads) are the
    same bits with 1, 2 and 3 threads; ``run_fn(isa, fn, *args)`` picks the path."""
    gen = torch.Generator().manual_seed(seed)
    n, k, g = 200, 1024, 64
    p8 = K.pack_linear_int8(*make_int8(n, k, False, gen))
    p4 = K.pack_linear_int4(*make_int4(n, k, g, False, gen), g)
    x = torch.randn(batch, k, generator=gen).to(torch.bfloat16)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append((run_fn(isa, K.linear_int8, x, p8, n, k), run_fn(isa, K.linear_int4, x, p4, n, k, g)))
    finally:
        torch.set_num_threads(before)
    for y8, y4 in outs[1:]:
        assert torch.equal(y8, outs[0][0]) and torch.equal(y4, outs[0][1])


@pytest.mark.parametrize("isa", ISAS)
def test_results_do_not_depend_on_thread_count(isa):
    assert_thread_count_free(run, isa, batch=6, seed=7)


def test_reference_backend_runs_the_twin():
    gen = torch.Generator().manual_seed(8)
    n, k = 24, 96
    packed = K.pack_linear_int8(*make_int8(n, k, True, gen))
    x = torch.randn(4, k, generator=gen)
    with K.use_backend("reference"):
        y = K.linear_int8(x, packed, n, k)
    assert torch.equal(y, R.linear_int8(x, packed, n, k))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 160),
    m=st.integers(1, 6),
    g=st.sampled_from(GROUPS),
    groups=st.integers(1, 2),
    symmetric=st.booleans(),
    scale_exp=st.integers(-6, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_shapes_and_values(n, k, m, g, groups, symmetric, scale_exp, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * 10.0**scale_exp
    q, scale, zp = make_int8(n, k, symmetric, gen)
    packed = K.pack_linear_int8(q, scale, zp)
    check(K.linear_int8(x, packed, n, k), x, packed, dequant_int8(q, scale, zp), n, k)
    k4 = g * groups
    q4, s4, z4 = make_int4(n, k4, g, symmetric, gen)
    p4 = K.pack_linear_int4(q4, s4, z4, g)
    x4 = torch.randn(m, k4, generator=gen) * 10.0**scale_exp
    check(K.linear_int4(x4, p4, n, k4, g), x4, p4, dequant_int4(q4, s4, z4, g), n, k4, g)


# ---- errors -------------------------------------------------------------------------------


@pytest.fixture(params=["c", "reference"])
def backend(request):
    with K.use_backend(request.param):
        yield request.param


def test_bad_inputs_are_refused(backend):
    gen = torch.Generator().manual_seed(9)
    n, k = 8, 64
    p8 = K.pack_linear_int8(*make_int8(n, k, True, gen))
    p4 = K.pack_linear_int4(*make_int4(n, k, 32, True, gen), 32)
    x = torch.randn(2, k)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        K.linear_int8(x.double(), p8, n, k)
    with pytest.raises(ValueError, match="in_features=64"):
        K.linear_int8(torch.randn(2, k + 1), p8, n, k)
    with pytest.raises(ValueError, match="'packed' does not hold a packed INT8"):
        K.linear_int8(x, p8, n + 1, k)
    with pytest.raises(ValueError, match="'packed' does not hold a packed INT4"):
        K.linear_int4(x, p8, n, k, 32)
    with pytest.raises(ValueError, match="'packed' does not hold a packed INT4 .* group_size=64"):
        K.linear_int4(x, p4, n, k, 64)
    with pytest.raises(TypeError, match="1-D uint8"):
        K.linear_int8(x, p8.float(), n, k)
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, 256; got 48"):
        K.linear_int4(x, p4, n, k, 48)
    with pytest.raises(ValueError, match=r"bias must be a float tensor of shape \[8\]"):
        K.linear_int8(x, p8, n, k, torch.zeros(n + 1))
    bad = x.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        K.linear_int8(bad, p8, n, k)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        K.linear_int4(bad, p4, n, k, 32)


def test_bad_weights_are_refused(backend):
    gen = torch.Generator().manual_seed(10)
    q, scale, zp = make_int8(4, 32, True, gen)
    with pytest.raises(ValueError, match="finite and > 0"):
        K.pack_linear_int8(q, torch.zeros(4), zp)
    with pytest.raises(ValueError, match="zero point"):
        K.pack_linear_int8(q, scale, zp + 200)
    with pytest.raises(ValueError, match="one value per output feature"):
        K.pack_linear_int8(q, scale[:3], zp)
    with pytest.raises(TypeError, match="int8 or uint8"):
        K.pack_linear_int8(q.float(), scale, zp)
    q4, s4, z4 = make_int4(4, 64, 32, False, gen)
    with pytest.raises(ValueError, match="multiple of group_size"):
        K.pack_linear_int4(q4, s4, z4, 128)
    with pytest.raises(ValueError, match="group_size must be one of"):
        K.pack_linear_int4(q4, s4, z4, 16)
    with pytest.raises(ValueError, match=r"shape \[out_features, in_features // group_size\]"):
        K.pack_linear_int4(q4, s4[:, :1], z4, 32)
    with pytest.raises(TypeError, match="float16"):
        K.pack_linear_int4(q4, s4.float(), z4, 32)
    with pytest.raises(ValueError, match="0..15"):
        K.pack_linear_int4(q4, s4, z4 + 16, 32)
