"""Static quantization kernels: the integer x integer linear layer and the histogram.

C and the torch reference agree bit for bit; the results do not depend on the thread count;
the integer sums are exact; bad arguments are refused with the same message on both paths.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mono_quant import _kernels as K

requires_c = pytest.mark.skipif(not K.c_available(), reason="C extension not built")
QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def randq(shape, dtype, gen):
    lo, hi = QRANGE[dtype]
    return torch.randint(lo, hi + 1, shape, dtype=dtype, generator=gen)


def operands(m, n, k, x_dtype, w_dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xq = randq((m, k), x_dtype, gen)
    wq = randq((n, k), w_dtype, gen)
    lo, hi = QRANGE[w_dtype]
    w_zp = torch.randint(lo, hi + 1, (n,), dtype=torch.int32, generator=gen)
    w_scale = torch.rand(n, generator=gen) * 0.01 + 1e-4
    x_zp = int(torch.randint(*QRANGE[x_dtype], (1,), generator=gen))
    b = torch.randn(n, generator=gen) if bias else None
    return xq, 0.0173, x_zp, wq, w_scale, w_zp, b


def both(args, out_dtype=torch.float32):
    with K.use_backend("c"):
        c = K.linear_static(*args, out_dtype=out_dtype)
    with K.use_backend("reference"):
        r = K.linear_static(*args, out_dtype=out_dtype)
    return c, r


def assert_bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def exact(xq, x_scale, x_zp, wq, w_scale, w_zp, bias):
    """The contract computed independently: int64 sums, then the float32 rescale."""
    acc = (xq.long() - x_zp) @ (wq.long() - w_zp.long()[:, None]).T
    out = acc.float() * (torch.tensor(x_scale, dtype=torch.float32) * w_scale)
    return out if bias is None else out + bias


# ---- linear_static ----------------------------------------------------------------------------

@requires_c
@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("w_dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_c_matches_reference_bit_for_bit(x_dtype, w_dtype, out_dtype, bias):
    args = operands(13, 23, 77, x_dtype, w_dtype, bias)
    c, r = both(args, out_dtype)
    assert_bits_equal(c, r)
    if out_dtype == torch.float32:
        assert_bits_equal(c, exact(*args))


@requires_c
@pytest.mark.parametrize("isa", K.linear_isas())
@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("w_dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("k", [1, 31, 63, 64, 65, 127, 128, 129, 300, 1000])
def test_every_dispatch_path_is_exact(isa, x_dtype, w_dtype, k):
    # each SIMD path has its own main loop (64 / 128 bytes) and tail: k around those sizes
    args = operands(5, 19, k, x_dtype, w_dtype, seed=k)
    with K.use_linear_isa(isa):
        c, r = both(args)
    assert_bits_equal(c, r)
    assert_bits_equal(c, exact(*args))


@requires_c
@pytest.mark.parametrize("isa", K.linear_isas())
def test_extreme_operands_on_every_path(isa):
    # the largest products (255 x -128 after the byte shifts) over more than one 32768-block
    k = 40_000
    for x_val, x_zp, w_dtype, w_val, w_zp in [(255, 0, torch.int8, -128, 0), (0, 255, torch.uint8, 255, 0),
                                              (255, 0, torch.uint8, 0, 255), (0, 0, torch.int8, 127, -128)]:
        xq = torch.full((2, k), x_val, dtype=torch.uint8)
        wq = torch.full((3, k), w_val, dtype=w_dtype)
        args = (xq, 1.0, x_zp, wq, torch.ones(3), torch.full((3,), w_zp, dtype=torch.int32), None)
        with K.use_linear_isa(isa):
            c, r = both(args)
        assert_bits_equal(c, r)
        assert_bits_equal(c, exact(*args))


def test_known_values(backend):
    xq = torch.tensor([[130, 128, 255]], dtype=torch.uint8)  # x_zp 128: centred 2, 0, 127
    wq = torch.tensor([[1, -1, 2], [0, 0, -3]], dtype=torch.int8)
    out = K.linear_static(xq, 0.5, 128, wq, torch.tensor([1.0, 2.0]), torch.zeros(2, dtype=torch.int32),
                          torch.tensor([0.25, -1.0]))
    # row 0: (2*1 + 0 + 127*2) * 0.5 * 1 + 0.25 = 128.25; row 1: (127 * -3) * 0.5 * 2 - 1 = -382
    assert out.tolist() == [[128.25, -382.0]]


@requires_c
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 9), n=st.integers(1, 11), k=st.integers(1, 70),
    x_dtype=st.sampled_from([torch.int8, torch.uint8]), w_dtype=st.sampled_from([torch.int8, torch.uint8]),
    out_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_random_shapes_agree(m, n, k, x_dtype, w_dtype, out_dtype, bias, seed):
    c, r = both(operands(m, n, k, x_dtype, w_dtype, bias, seed), out_dtype)
    assert c.shape == (m, n)
    assert_bits_equal(c, r)


def test_sums_beyond_int32_are_exact(backend):
    # 70000 products of 255 * -255: the sum (-4.55e9) needs int64, and 32768-long blocks
    k = 70_000
    xq = torch.full((2, k), 255, dtype=torch.uint8)
    wq = torch.zeros(3, k, dtype=torch.uint8)
    w_zp = torch.tensor([255, 0, 128], dtype=torch.int32)
    out = K.linear_static(xq, 1.0, 0, wq, torch.ones(3), w_zp)
    expected = [float(torch.tensor(255 * -z * k, dtype=torch.float64).float()) for z in (255, 0, 128)]
    assert out.tolist() == [expected, expected]


def test_leading_dimensions_and_empty_batches(backend):
    xq, xs, xz, wq, ws, wz, b = operands(6, 5, 8, torch.uint8, torch.int8)
    out = K.linear_static(xq.reshape(2, 3, 8), xs, xz, wq, ws, wz, b)
    assert out.shape == (2, 3, 5)
    assert torch.equal(out.reshape(6, 5), K.linear_static(xq, xs, xz, wq, ws, wz, b))
    assert K.linear_static(xq[:0], xs, xz, wq, ws, wz, b).shape == (0, 5)


@requires_c
def test_results_do_not_depend_on_thread_count():
    args = operands(64, 301, 700, torch.uint8, torch.int8, seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            with K.use_backend("c"):
                results.append(K.linear_static(*args))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0].view(torch.int32), r.view(torch.int32)) for r in results[1:])


@pytest.mark.parametrize(
    "change",
    [
        {"x_zp": 256},                                     # outside uint8
        {"w_zp": torch.tensor([0, 300], dtype=torch.int32)},
        {"x_scale": 0.0},
        {"x_scale": float("inf")},
        {"w_scale": torch.tensor([1.0, -1.0])},
        {"bias": torch.tensor([0.0, float("nan")])},
        {"x_scale": 1e30, "w_scale": torch.tensor([1e30, 1.0])},  # product overflows float32
    ],
    ids=["x_zp", "w_zp", "x_scale_zero", "x_scale_inf", "w_scale_negative", "bias_nan", "scale_product"],
)
def test_out_of_range_values_are_refused_alike(backend, change):
    args = dict(xq=torch.zeros(1, 3, dtype=torch.uint8), x_scale=1.0, x_zp=0,
                wq=torch.zeros(2, 3, dtype=torch.int8), w_scale=torch.ones(2),
                w_zp=torch.zeros(2, dtype=torch.int32), bias=torch.zeros(2))
    args.update(change)
    with pytest.raises(ValueError, match=r"linear_static: an argument is out of range: .*zero point inside"):
        K.linear_static(**args)


def test_python_side_argument_errors():
    x = torch.zeros(2, 3, dtype=torch.uint8)
    w = torch.zeros(4, 3, dtype=torch.int8)
    s, z = torch.ones(4), torch.zeros(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="same K"):
        K.linear_static(x, 1.0, 0, torch.zeros(4, 5, dtype=torch.int8), s, z)
    with pytest.raises(ValueError, match=r"one value per output channel \(4\); got 3"):
        K.linear_static(x, 1.0, 0, w, torch.ones(3), z)
    with pytest.raises(ValueError, match="torch.int8 or torch.uint8"):
        K.linear_static(x.float(), 1.0, 0, w, s, z)
    with pytest.raises(ValueError, match="out_dtype must be one of"):
        K.linear_static(x, 1.0, 0, w, s, z, out_dtype=torch.float64)


@requires_c
class TestCModuleChecks:
    C = K._C

    def call(self, x=None, w=None, w_scale=None, w_zp=None, bias=None, out=None, x_zp=0):
        x = torch.zeros(2, 3, dtype=torch.uint8) if x is None else x
        w = torch.zeros(4, 3, dtype=torch.int8) if w is None else w
        w_scale = torch.ones(4) if w_scale is None else w_scale
        w_zp = torch.zeros(4, dtype=torch.int32) if w_zp is None else w_zp
        out = torch.empty(2, 4) if out is None else out
        return self.C.linear_static(x.__dlpack__(), 1.0, x_zp, w.__dlpack__(), w_scale.__dlpack__(),
                                    w_zp.__dlpack__(), None if bias is None else bias.__dlpack__(),
                                    out.__dlpack__(), 1)

    def test_wrong_dtype_names_the_choices(self):
        with pytest.raises(TypeError, match=r"'x' has dtype float32; expected one of: int8, uint8"):
            self.call(x=torch.zeros(2, 3))

    def test_k_mismatch(self):
        with pytest.raises(ValueError, match="x has 3 input features but w has 5"):
            self.call(w=torch.zeros(4, 5, dtype=torch.int8))

    def test_out_shape(self):
        with pytest.raises(ValueError, match=r"'out' must have shape \[2, 4\]; got \[2, 3\]"):
            self.call(out=torch.empty(2, 3))

    def test_bias_length(self):
        with pytest.raises(ValueError, match="'bias' must hold 4 values"):
            self.call(bias=torch.zeros(3))

    def test_zero_point_range(self):
        with pytest.raises(ValueError, match="out of range"):
            self.call(x_zp=-1)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="'x' must have 2 dimensions; got 3"):
            self.call(x=torch.zeros(1, 2, 3, dtype=torch.uint8))


# ---- histogram --------------------------------------------------------------------------------

@requires_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lo,hi,bins", [(-4.0, 5.0, 2048), (0.0, 1.0, 7), (-1e-3, 2e-3, 1), (-3e4, 6e4, 1 << 12)])
def test_histogram_c_matches_reference(dtype, lo, hi, bins):
    x = (torch.randn(50_001, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    with K.use_backend("c"):
        c = K.histogram(x, lo, hi, bins)
    with K.use_backend("reference"):
        r = K.histogram(x, lo, hi, bins)
    assert c.dtype == torch.int64 and c.shape == (bins,)
    assert torch.equal(c, r) and int(c.sum()) == x.numel()


def test_histogram_edges_and_outside_values(backend):
    x = torch.tensor([-10.0, 0.0, 0.24999, 0.25, 0.5, 0.99, 1.0, 7.0])
    # 4 bins over [0, 1]: below 0 -> bin 0, exactly 1.0 and above -> the last bin
    assert K.histogram(x, 0.0, 1.0, 4).tolist() == [3, 1, 1, 3]
    assert K.histogram(torch.empty(0), 0.0, 1.0, 3).tolist() == [0, 0, 0]


@requires_c
@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3000), bins=st.integers(1, 300), lo=st.floats(-100, 100),
       width=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_histogram_random_agree(n, bins, lo, width, scale, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale
    with K.use_backend("c"):
        c = K.histogram(x, lo, lo + width, bins)
    with K.use_backend("reference"):
        r = K.histogram(x, lo, lo + width, bins)
    assert torch.equal(c, r)


@requires_c
def test_histogram_does_not_depend_on_thread_count():
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    counts = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            with K.use_backend("c"):
                counts.append(K.histogram(x, -3.0, 3.0, 2048))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(counts[0], c) for c in counts[1:])


def test_histogram_argument_errors(backend):
    x = torch.randn(10)
    for lo, hi in [(1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0), (-3e38, 3e38), (0.0, 1e-45)]:
        with pytest.raises(ValueError, match="histogram range .* is invalid"):
            K.histogram(x, lo, hi, 16)
    for bins in (0, 2**24 + 1, 2.5, True):
        with pytest.raises(ValueError, match="bins must be an integer from 1 to"):
            K.histogram(x, 0.0, 1.0, bins)
    with pytest.raises(ValueError, match="NaN or Inf"):
        K.histogram(torch.tensor([1.0, float("inf")]), 0.0, 1.0, 4)


@requires_c
def test_histogram_c_module_checks():
    with pytest.raises(TypeError, match=r"'out_counts' has dtype int32; expected one of: int64"):
        K._C.histogram(torch.zeros(3).__dlpack__(), 0.0, 1.0, torch.zeros(4, dtype=torch.int32).__dlpack__(), 1)
    with pytest.raises(ValueError, match="histogram range"):
        K._C.histogram(torch.zeros(3).__dlpack__(), 1.0, 0.0, torch.zeros(4, dtype=torch.int64).__dlpack__(), 1)


def test_a_zero_sum_is_positive_zero(backend):
    # x == x_zero_point makes every product 0 * (w - w_zp), some with w - w_zp < 0: the exact
    # integer sum is 0, so the output is +0.0 on both paths (float math would give -0.0)
    xq = torch.tensor([[-39]], dtype=torch.int8)
    wq = torch.tensor([[-97], [112]], dtype=torch.int8)
    out = K.linear_static(xq, 0.5, -39, wq, torch.ones(2), torch.tensor([115, 0], dtype=torch.int32))
    assert out.view(torch.int32).tolist() == [[0, 0]]
