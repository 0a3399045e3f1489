"""GPTQ kernels: the C Hessian and column loop against their torch twins (the loop bit for bit,
on every ISA table, every block size and thread count), masking, the canonical layout of the
result, and the error messages."""

from __future__ import annotations

import pytest
import torch

from mono_quant import _kernels as K
from mono_quant import _reference as ref

ISAS = K.gptq_isas()
needs_c = pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")


def factor(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """v upper triangular with v v^T = h + damp * mean(diag h) I, float32: what the loop takes."""
    k = h.shape[0]
    hd = h + torch.eye(k, dtype=torch.float64) * damp * float(torch.diagonal(h).mean())
    return torch.linalg.cholesky(hd.flip(0, 1)).flip(0, 1).float()


def problem(n: int, k: int, g: int, rows: int = 200, symmetric: bool = False, act_order: bool = True, seed: int = 0):
    """A weight, its calibration inputs (columns of very different scales, as real activations
    have), the static groups, the permutation, the weight in processing order and v."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(rows, k, generator=gen) * torch.rand(k, generator=gen) * 4
    h = torch.zeros(k, k, dtype=torch.float64)
    K.gptq_hessian_add(x, None, h)
    h = K.hessian_symmetric(h)
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else None
    hp = h if perm is None else h[perm][:, perm]
    _, scale, zp = K.int4_quantize(w, g, symmetric)
    wp = w if perm is None else w[:, perm].contiguous()
    return w, x, scale, zp, perm, wp, factor(hp)


def run_c(*args, isa: str | None = None, **kwargs) -> torch.Tensor:
    with K.use_backend("c"):
        if isa is None:
            return K.gptq_int4(*args, **kwargs)
        with K.use_gptq_isa(isa):
            return K.gptq_int4(*args, **kwargs)


# ---- the column loop ------------------------------------------------------------------------

@needs_c
@pytest.mark.parametrize("n,k,g", [(8, 64, 32), (13, 256, 64), (21, 384, 128), (6, 512, 256)])
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_column_loop_matches_its_twin_bit_for_bit(n, k, g, act_order, symmetric):
    w, _, scale, zp, perm, wp, v = problem(n, k, g, symmetric=symmetric, act_order=act_order)
    want = ref.gptq_int4(wp, v, perm, scale, zp, g)
    for isa in ISAS:
        for block in (1, 5, 128, 1000):
            got = run_c(wp, v, perm, scale, zp, g, block_size=block, isa=isa)
            assert torch.equal(got, want), f"{isa}, block {block}: {(got != want).sum()} bytes differ"
    assert torch.equal(wp, w if perm is None else w[:, perm]), "the caller's weight was modified"


@needs_c
def test_column_loop_does_not_depend_on_the_thread_count():
    _, _, scale, zp, perm, wp, v = problem(37, 256, 32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_c(wp, v, perm, scale, zp, 32))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.usefixtures("backend")
def test_result_is_the_canonical_int4_layout_with_the_static_groups():
    """Nibbles land at the layer's own column (not the processing position), every value is
    nibble - zero_point times the static group's scale, and with v = I (no correlation) GPTQ is
    exactly round-to-nearest, i.e. the data-free quantization with the same groups."""
    w, _, scale, zp, perm, wp, _ = problem(16, 256, 64)
    q_free, _, _ = K.int4_quantize(w, 64, False)
    eye = torch.eye(256)
    assert torch.equal(K.gptq_int4(wp, eye, perm, scale, zp, 64), q_free)
    assert torch.equal(K.gptq_int4(w, eye, None, scale, zp, 64), q_free)
    identity = torch.arange(256)
    _, _, _, _, _, _, v = problem(16, 256, 64, act_order=False)
    assert torch.equal(K.gptq_int4(w, v, identity, scale, zp, 64), K.gptq_int4(w, v, None, scale, zp, 64))


@pytest.mark.usefixtures("backend")
def test_the_loop_is_gptq_with_the_inverse_hessian_factor():
    """The running-sum form with v equals GPTQ as published (error scaled by u[i][i], spread
    with u's row, u = v^-1 the upper Cholesky factor of the inverse Hessian), computed here in
    float64: the same nibbles but for the rare one that float32 rounding tips over."""
    w, _, scale, zp, perm, wp, v = problem(24, 256, 32)
    u = torch.linalg.inv(v.double())
    s, z = scale.double()[:, perm // 32], zp.double()[:, perm // 32]
    x, nibbles = wp.double().clone(), torch.empty(24, 256)
    for i in range(256):
        level = torch.round(torch.clamp(x[:, i] / s[:, i], -z[:, i], 15 - z[:, i]))
        nibbles[:, i] = level + z[:, i]
        err = (x[:, i] - level * s[:, i]) / u[i, i]
        x[:, i + 1:] -= err[:, None] * u[i, i + 1:]
    classic = torch.empty_like(nibbles)
    classic[:, perm] = nibbles
    got = K.int4_unpack(K.gptq_int4(wp, v, perm, scale, zp, 32)).float()
    assert float((got == classic).float().mean()) > 0.999


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("g", [32, 128])
def test_gptq_lowers_the_output_error_on_the_calibration_inputs(g):
    """What GPTQ is for: ||x (w - w_hat)^T|| is smaller than with round-to-nearest."""
    w, x, scale, zp, perm, wp, v = problem(32, 256, g, rows=400)
    q_free, _, _ = K.int4_quantize(w, g, False)
    q = K.gptq_int4(wp, v, perm, scale, zp, g)
    err = lambda qw: float((x @ (w - K.int4_dequantize(qw, scale, zp, g)).T).pow(2).sum())  # noqa: E731
    assert err(q) < 0.8 * err(q_free)


@pytest.mark.usefixtures("backend")
def test_column_loop_refuses_bad_arguments():
    w, _, scale, zp, perm, wp, v = problem(8, 64, 32)
    bad_perm = perm.clone()
    bad_perm[0] = bad_perm[1]
    bad_v = v.clone()
    bad_v[3, 3] = 0.0
    bad_scale = scale.clone()
    bad_scale[0, 0] = 0.0
    nan_w = wp.clone()
    nan_w[2, 5] = float("nan")
    for args, match in [
        ((wp, v, bad_perm, scale, zp, 32), "perm a permutation"),
        ((wp, bad_v, perm, scale, zp, 32), r"v\[i\]\[i\] > 0"),
        ((wp, v, perm, bad_scale, zp, 32), "scales finite and > 0"),
        ((wp, v, perm, scale, zp + 16, 32), "zero points 0..15"),
        ((nan_w, v, perm, scale, zp, 32), "NaN or Inf"),
    ]:
        with pytest.raises(ValueError, match=match):
            K.gptq_int4(*args)
    with pytest.raises(ValueError, match="group_size must be one of"):
        K.gptq_int4(wp, v, perm, scale, zp, 48)
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        K.gptq_int4(wp, v, perm, scale, zp, 32, block_size=0)
    with pytest.raises(ValueError, match=r"v must have shape \[64, 64\]"):
        K.gptq_int4(wp, v[:32, :32], perm, scale, zp, 32)
    with pytest.raises(ValueError, match="scale must have shape"):
        K.gptq_int4(wp, v, perm, scale.float(), zp, 32)
    with pytest.raises(ValueError, match="perm must be an integer tensor"):
        K.gptq_int4(wp, v, perm[:10], scale, zp, 32)


@needs_c
def test_isa_hook():
    assert ISAS and ISAS[0] == "portable"
    with pytest.raises(ValueError, match="cannot run here"):
        with K.use_gptq_isa("sse9"):
            pass


# ---- the Hessian ----------------------------------------------------------------------------

@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("k", [1, 7, 64, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hessian_is_x_transpose_x_over_the_unmasked_rows(k, dtype):
    x = (torch.randn(300, k) * 3).to(dtype)
    mask = torch.rand(300) > 0.3
    h = torch.zeros(k, k, dtype=torch.float64)
    assert K.gptq_hessian_add(x[:100], None, h) == 100
    assert K.gptq_hessian_add(x[100:], mask[100:], h) == int(mask[100:].sum())
    xd = torch.cat([x[:100], x[100:][mask[100:]]]).double()
    want = xd.T @ xd
    assert torch.equal(torch.tril(h, -1), torch.zeros_like(h)), "the lower triangle must stay as it was"
    full = K.hessian_symmetric(h)
    assert torch.allclose(full, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


@needs_c
@pytest.mark.parametrize("k", [200, 13])  # 13: partial tiles of 4 (AVX2) and of 8 rows (AVX-512)
def test_hessian_does_not_depend_on_threads_or_isa(k):
    x = torch.randn(700, k)
    mask = (torch.arange(700) % 3 != 0).to(torch.uint8)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for isa in ISAS:
                h = torch.zeros(k, k, dtype=torch.float64)
                with K.use_backend("c"), K.use_gptq_isa(isa):
                    K.gptq_hessian_add(x, mask, h)
                results.append(h)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.usefixtures("backend")
def test_hessian_refuses_non_finite_counted_rows_and_leaves_h_alone():
    x = torch.randn(10, 16)
    x[3, 4] = float("inf")
    h = torch.ones(16, 16, dtype=torch.float64)
    mask = torch.ones(10, dtype=torch.bool)
    mask[3] = False
    assert K.gptq_hessian_add(x, mask, h) == 9  # the masked-out row is never read
    before = h.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        K.gptq_hessian_add(x, None, h)
    assert torch.equal(h, before)
    with pytest.raises(ValueError, match="contiguous float64"):
        K.gptq_hessian_add(x, None, torch.zeros(16, 16))
    with pytest.raises(ValueError, match="one value per row"):
        K.gptq_hessian_add(x, mask[:5], h)
