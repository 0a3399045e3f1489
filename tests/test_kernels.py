"""Foundation kernels: the C path and the torch reference agree bit for bit.

Every test that computes runs on both backends; the C-only tests check what the C module
refuses and how it says so.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mono_quant import _kernels as K
from mono_quant import _reference as R

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
requires_c = pytest.mark.skipif(not K.c_available(), reason="C extension not built")


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, so -0.0 != 0.0 and fp16 payloads compare exactly."""
    view = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.view(view[t.dtype]) if t.dtype in view else t


def pipeline(x, axis, qdtype, symmetric, out_dtype):
    mn, mx = K.minmax(x, axis)
    scale, zp = K.qparams(mn, mx, qdtype, symmetric)
    q = K.quantize(x, scale, zp, axis, qdtype)
    deq = K.dequantize(q, scale, zp, axis, out_dtype)
    return mn, mx, scale, zp, q, deq, K.sqnr(x, deq)


def both_backends(*args):
    with K.use_backend("c"):
        c = pipeline(*args)
    with K.use_backend("reference"):
        r = pipeline(*args)
    return c, r


def assert_same(c, r):
    for a, b in zip(c[:6], r[:6]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(bits(a), bits(b))
    if math.isinf(r[6]):
        assert c[6] == r[6]
    else:
        assert c[6] == pytest.approx(r[6], rel=1e-9)


@requires_c
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1, None])
@pytest.mark.parametrize("qdtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_c_matches_reference(dtype, axis, qdtype, symmetric):
    x = (torch.randn(13, 7, 5, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    assert_same(*both_backends(x, axis, qdtype, symmetric, dtype))


EDGE_CASES = {
    "all_zero_channel": lambda: torch.cat([torch.zeros(1, 16), torch.randn(3, 16)]),
    "one_element": lambda: torch.tensor([[0.37]]),
    "huge_values": lambda: torch.tensor([[3.0e38, -3.0e38, 1.0], [-1e38, 2e38, 0.0]]),
    "denormals": lambda: torch.tensor([[1e-40, -3e-41, 0.0, 7e-45], [1e-39, 2e-39, -1e-38, 5e-42]]),
    "negative_only": lambda: -torch.rand(4, 9) - 0.5,
    "positive_only": lambda: torch.rand(4, 9) + 0.5,
    "odd_sizes": lambda: torch.randn(3, 17, 1),
    "constant_channel": lambda: torch.full((5, 11), 2.5),
}


@requires_c
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("qdtype", [torch.int8, torch.uint8])
def test_edge_cases_agree_and_scales_are_valid(case, symmetric, qdtype):
    torch.manual_seed(0)
    x = EDGE_CASES[case]()
    c, r = both_backends(x, 0, qdtype, symmetric, torch.float32)
    assert_same(c, r)
    scale = c[2]
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert bool(torch.isfinite(c[5]).all())


def test_all_zero_channel_round_trips_to_zero():
    x = torch.zeros(2, 8)
    _, _, scale, zp, q, deq, db = pipeline(x, 0, torch.int8, True, torch.float32)
    assert scale.tolist() == [R.MIN_SCALE, R.MIN_SCALE]
    assert torch.equal(deq, x) and db == math.inf


def test_round_half_to_even_like_torch():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 127.0]])
    scale = torch.tensor([1.0])
    zp = torch.tensor([0], dtype=torch.int32)
    for backend in (["c"] if K.c_available() else []) + ["reference"]:
        with K.use_backend(backend):
            q = K.quantize(x, scale, zp, 0, torch.int8)
        assert q.tolist() == [[0, 2, 2, 0, -2, -2, 127]], backend


def test_asymmetric_zero_point_is_clamped_and_zero_is_exact():
    x = torch.tensor([[0.5, 2.0, 3.0], [-4.0, -1.0, -2.0]])
    scale, zp = K.qparams(*K.minmax(x, 0), torch.uint8, symmetric=False)
    assert zp.tolist() == [0, 255]  # the range is widened to include 0
    q = K.quantize(torch.zeros(2, 1), scale, zp, 0, torch.uint8)
    assert torch.equal(K.dequantize(q, scale, zp, 0), torch.zeros(2, 1))


@requires_c
@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    axis_seed=st.integers(0, 3),
    dtype=st.sampled_from(FLOAT_DTYPES),
    symmetric=st.booleans(),
    qdtype=st.sampled_from([torch.int8, torch.uint8]),
    scale_exp=st.integers(-30, 30),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_agree(shape, axis_seed, dtype, symmetric, qdtype, scale_exp, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.float16:  # stay inside fp16's finite range
        scale_exp = min(scale_exp, 10)
    x = (torch.randn(shape, generator=gen) * 2.0**scale_exp).to(dtype)
    axis = axis_seed % len(shape) if axis_seed < 3 else None
    assert_same(*both_backends(x, axis, qdtype, symmetric, dtype))


@requires_c
def test_results_do_not_depend_on_thread_count():
    x = torch.randn(300, 700, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            with K.use_backend("c"):
                results.append(pipeline(x, 0, torch.int8, False, torch.float32)
                               + (K.minmax(x, None), K.sqnr(x, x * 0.999)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0][:6], other[:6]):
            assert torch.equal(bits(a), bits(b))
        assert results[0][6] == other[6] and results[0][8] == other[8]
        assert all(torch.equal(a, b) for a, b in zip(results[0][7], other[7]))


def test_sqnr_values():
    x = torch.tensor([3.0, 4.0])
    for backend in (["c"] if K.c_available() else []) + ["reference"]:
        with K.use_backend(backend):
            assert K.sqnr(x, x) == math.inf
            assert K.sqnr(torch.zeros(2), x) == -math.inf
            assert K.sqnr(x, torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0))


@pytest.mark.parametrize("backend", ["c", "reference"])
def test_nan_and_inf_are_refused_with_advice(backend):
    if backend == "c" and not K.c_available():
        pytest.skip("C extension not built")
    bad = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    with K.use_backend(backend):
        with pytest.raises(ValueError, match="NaN or Inf.*nan_to_num"):
            K.minmax(bad, 0)
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.quantize(bad, torch.ones(2), torch.zeros(2, dtype=torch.int32), 0)
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.sqnr(bad, bad)


def test_python_side_argument_errors():
    with pytest.raises(ValueError, match="torch.int8 or torch.uint8"):
        K.quantize(torch.ones(2, 2), torch.ones(2), torch.zeros(2, dtype=torch.int32), 0, torch.int16)
    with pytest.raises(ValueError, match="one value per channel"):
        K.quantize(torch.ones(2, 2), torch.ones(3), torch.zeros(3, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="one shape"):
        K.sqnr(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        with K.use_backend("gpu"):
            pass


# ---- what the C module itself refuses ------------------------------------------------------
@requires_c
class TestCModuleChecks:
    C = K._C

    def outs(self, n=2):
        return torch.empty(n).__dlpack__(), torch.empty(n).__dlpack__()

    def test_wrong_dtype_names_the_choices(self):
        x = torch.ones(1, 2, 1, dtype=torch.float64)
        with pytest.raises(TypeError, match=r"'x' has dtype float64; expected one of: float32, float16, bfloat16"):
            self.C.minmax(x.__dlpack__(), *self.outs(), 1)

    def test_non_contiguous_is_refused(self):
        x = torch.ones(4, 2, 3).transpose(0, 2)
        with pytest.raises(ValueError, match=r"'x' is not contiguous.*contiguous\(\)"):
            self.C.minmax(x.__dlpack__(), *self.outs(), 1)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="'x' must have 3 dimensions; got 2"):
            self.C.minmax(torch.ones(2, 2).__dlpack__(), *self.outs(), 1)

    def test_not_a_capsule(self):
        with pytest.raises(TypeError, match="DLPack capsule"):
            self.C.minmax(torch.ones(1, 2, 1), *self.outs(), 1)

    def test_versioned_capsules_are_read(self):
        x = torch.tensor([[[1.0], [-2.0]]])
        mn, mx = torch.empty(2), torch.empty(2)
        self.C.minmax(x.__dlpack__(max_version=(1, 0)), mn.__dlpack__(max_version=(1, 0)),
                      mx.__dlpack__(max_version=(1, 0)), 1)
        assert mn.tolist() == [1.0, -2.0] and mx.tolist() == [1.0, -2.0]

    def test_output_size_mismatch(self):
        with pytest.raises(ValueError, match="'out_min' must hold 2 values"):
            self.C.minmax(torch.ones(1, 2, 1).__dlpack__(), *self.outs(3), 1)

    def test_empty_tensor(self):
        with pytest.raises(ValueError, match="empty"):
            self.C.minmax(torch.ones(0, 2, 1).__dlpack__(), *self.outs(), 1)

    def test_bad_scale(self):
        x = torch.ones(1, 2, 1)
        q = torch.empty(1, 2, 1, dtype=torch.int8)
        with pytest.raises(ValueError, match="scales must be finite and > 0"):
            self.C.quantize(x.__dlpack__(), torch.tensor([1.0, 0.0]).__dlpack__(),
                            torch.zeros(2, dtype=torch.int32).__dlpack__(), q.__dlpack__(), 1)

    def test_cpu_features_reports_booleans(self):
        feats = K.cpu_features()
        assert {"avx2", "avx512", "avx512_vnni"} <= set(feats)
        assert all(isinstance(feats[k], bool) for k in ("avx2", "avx512", "avx512_vnni"))
