"""The per-row INT8 embedding kernels (csrc/embedding.c): gather and bags, C against the torch
twin bit for bit, against F.embedding / F.embedding_bag on the dequantized table, indices out of
range (never read), bad offsets, and thread counts. Also run under ASan + UBSan (make test-asan)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mono_quant import _kernels as K
from mono_quant import _reference as ref
from mono_quant._int8 import dequantize_weight_int8, quantize_weight_int8

needs_c = pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")
# Every set of loops this CPU runs (the same C compiled per ISA): each must give the twin's bits.
ISAS = K.embedding_isas() or ["portable"]


def table(rows: int = 40, dim: int = 300, symmetric: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=g) * torch.rand(rows, 1, generator=g) * 3
    return quantize_weight_int8(weight, symmetric=symmetric)


def both(fn, *args, isa: str = "auto", **kwargs):
    """``fn`` on the C kernels (loops ``isa``) and on the torch twin."""
    with K.use_backend("c"), K.use_embedding_isa(isa):
        c = fn(*args, **kwargs)
    with K.use_backend("reference"):
        r = fn(*args, **kwargs)
    return c, r


@needs_c
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 0), (2, 3, 4), ()])
def test_gather_equals_the_twin_and_f_embedding(isa, symmetric, out_dtype, shape):
    q, scale, zp = table(symmetric=symmetric)
    idx = torch.randint(0, 40, shape)
    c, r = both(K.embedding_int8, idx, q, scale, zp, out_dtype, isa=isa)
    assert c.shape == (*shape, 300) and c.dtype == out_dtype
    assert torch.equal(c, r)
    expected = F.embedding(idx, dequantize_weight_int8(q, scale, zp)).to(out_dtype)
    assert torch.equal(c, expected)
    with K.use_backend("c"):  # int32 indices, as F.embedding takes them
        assert torch.equal(K.embedding_int8(idx.int(), q, scale, zp, out_dtype), c)


@pytest.mark.parametrize("bad", [40, -1, 1 << 40, -(1 << 62)])
def test_an_index_out_of_range_raises_index_error(backend, bad):
    q, scale, zp = table()
    with pytest.raises(IndexError, match="index out of range in self"):
        K.embedding_int8(torch.tensor([[1, 2], [bad, 3]]), q, scale, zp)
    with pytest.raises(IndexError, match="index out of range in self"):
        K.embedding_int8_bag(torch.tensor([1, 2, bad]), torch.tensor([0, 2, 3]), None, q, scale, zp, "sum")


def test_indices_outside_every_bag_are_not_read(backend):
    # include_last_offset: indices after the last offset belong to no bag (torch ignores them too)
    q, scale, zp = table()
    out = K.embedding_int8_bag(torch.tensor([1, 2, 999]), torch.tensor([0, 2]), None, q, scale, zp, "sum")
    assert torch.equal(out, F.embedding_bag(torch.tensor([1, 2]), dequantize_weight_int8(q, scale, zp),
                                            torch.tensor([0]), mode="sum"))


@pytest.mark.parametrize("offsets, message", [([1, 2], "offsets\\[0\\] has to be 0"),
                                              ([0, 3, 2], "non-decreasing"), ([0, 5], "within \\[0, 4\\]")])
def test_bad_offsets_are_refused(backend, offsets, message):
    q, scale, zp = table()
    with pytest.raises(ValueError, match=message):
        K.embedding_int8_bag(torch.tensor([1, 2, 3, 4]), torch.tensor(offsets), None, q, scale, zp, "sum")


def test_per_sample_weights_need_mode_sum_and_one_weight_per_index():
    q, scale, zp = table()
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 3])
    with pytest.raises(NotImplementedError, match="only supported for mode='sum'"):
        K.embedding_int8_bag(idx, off, torch.ones(3), q, scale, zp, "mean")
    with pytest.raises(ValueError, match="one value per index"):
        K.embedding_int8_bag(idx, off, torch.ones(2), q, scale, zp, "sum")
    with pytest.raises(TypeError, match="int64 or int32"):
        K.embedding_int8(idx.float(), q, scale, zp)


def bags_case(data, rows: int):
    lengths = data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=6), label="lengths")
    n = sum(lengths)
    idx = torch.tensor(data.draw(st.lists(st.integers(0, rows - 1), min_size=n, max_size=n)), dtype=torch.int64)
    offsets = torch.tensor([0] + lengths).cumsum(0)
    return idx, offsets


@needs_c
@settings(max_examples=60, deadline=None)
@given(data=st.data(), mode=st.sampled_from(["sum", "mean", "max"]), weighted=st.booleans(),
       padding=st.sampled_from([-1, 0, 5]), symmetric=st.booleans(),
       out_dtype=st.sampled_from([torch.float32, torch.bfloat16]), dim=st.sampled_from([1, 33, 257, 1100]),
       isa=st.sampled_from(ISAS))
def test_bags_equal_the_twin_and_f_embedding_bag(data, mode, weighted, padding, symmetric, out_dtype, dim, isa):
    rows = 12
    q, scale, zp = table(rows, dim, symmetric)
    idx, offsets = bags_case(data, rows)
    psw = torch.rand(idx.numel()) if weighted and mode == "sum" else None
    c, r = both(K.embedding_int8_bag, idx, offsets, psw, q, scale, zp, mode, padding, out_dtype, isa=isa)
    assert c.shape == (offsets.numel() - 1, dim) and c.dtype == out_dtype
    assert torch.equal(c, r)
    expected = F.embedding_bag(idx, dequantize_weight_int8(q, scale, zp), offsets, mode=mode, per_sample_weights=psw,
                               include_last_offset=True, padding_idx=None if padding < 0 else padding)
    torch.testing.assert_close(c.float(), expected, rtol=1e-5 if out_dtype == torch.float32 else 1e-2, atol=1e-5)


@needs_c
def test_results_do_not_depend_on_the_thread_count():
    q, scale, zp = table(500, 96)
    idx = torch.randint(0, 500, (4000,))
    offsets = torch.arange(0, 4001, 4)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append((K.embedding_int8(idx, q, scale, zp), K.embedding_int8_bag(idx, offsets, None, q, scale, zp,
                                                                                   "mean")))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, outs[0][0]) and torch.equal(b, outs[0][1]) for a, b in outs)


@needs_c
def test_the_c_binding_checks_its_arguments():
    C = K._C
    q, scale, zp = table()
    idx, out = torch.tensor([1, 2]), torch.empty(2, 300)
    with pytest.raises(ValueError, match="'out' must have shape \\[2, 300\\]"):
        C.embedding_int8_gather(q.__dlpack__(), scale.__dlpack__(), zp.__dlpack__(), idx.__dlpack__(),
                                torch.empty(3, 300).__dlpack__(), 1)
    with pytest.raises(ValueError, match="'scale' must hold 40 values"):
        C.embedding_int8_gather(q.__dlpack__(), scale[:5].clone().__dlpack__(), zp.__dlpack__(), idx.__dlpack__(),
                                out.__dlpack__(), 1)
    with pytest.raises(TypeError, match="'idx' has dtype int32"):
        C.embedding_int8_gather(q.__dlpack__(), scale.__dlpack__(), zp.__dlpack__(), idx.int().__dlpack__(),
                                out.__dlpack__(), 1)
    with pytest.raises(ValueError, match="padding_idx must be -1"):
        C.embedding_int8_bag(q.__dlpack__(), scale.__dlpack__(), zp.__dlpack__(), idx.__dlpack__(),
                             torch.tensor([0, 2]).__dlpack__(), None, 0, 40, torch.empty(1, 300).__dlpack__(), 1)
    with pytest.raises(ValueError, match="mode must be 0"):
        C.embedding_int8_bag(q.__dlpack__(), scale.__dlpack__(), zp.__dlpack__(), idx.__dlpack__(),
                             torch.tensor([0, 2]).__dlpack__(), None, 3, -1, torch.empty(1, 300).__dlpack__(), 1)


@needs_c
def test_every_isa_can_be_forced_and_unknown_ones_are_refused():
    assert ISAS[0] == "portable"
    for isa in ISAS:
        with K.use_embedding_isa(isa):
            assert K._C.set_embedding_isa("auto") == isa
            K._C.set_embedding_isa(isa)
    with pytest.raises(ValueError, match="cannot run here"):
        K._C.set_embedding_isa("sse9")


def test_the_twin_is_the_documented_formula():
    q, scale, zp = table(symmetric=False)
    idx = torch.tensor([3, 0, 3])
    rows = ref.embedding_int8_gather(q, scale, zp, idx)
    expected = (q[idx].int() - zp[idx].unsqueeze(1)).float() * scale[idx].unsqueeze(1)
    assert torch.equal(rows, expected)


@needs_c
@pytest.mark.parametrize("isa", ISAS)
def test_rows_longer_than_a_stripe(isa):
    q, scale, zp = table(9, 2500)  # > MQ_EMBEDDING_STRIPE columns: written in several stripes
    idx = torch.tensor([[8, 0, 3], [3, 3, 1]])
    for out_dtype in (torch.float32, torch.float16):
        c, r = both(K.embedding_int8, idx, q, scale, zp, out_dtype, isa=isa)
        assert torch.equal(c, r)
