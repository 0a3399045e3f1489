"""The Linear batch (GEMM) kernels: AMX-INT8 tiles, real where the CPU has them and emulated in C
(``amx_emulated``: the same kernel, each tile instruction computed by C with the instruction's
semantics) on any AVX-512 VNNI CPU, so the tile data movement is checked here too.

Every batch kernel is forced from batch 1 on (``use_linear_gemm_min_batch(1)``) and compared
with the torch twin within the documented bound (``test_linear_kernels.check``), and with the
avx512_vnni kernels bit for bit (the tile path computes the same integers and then the same
float operations in the same order), on shapes that cut every loop short: batch rows not a
multiple of the 16-row tile or of the 64-row panel, output rows not a multiple of 16, k tails
and k longer than one 1024-wide chunk, every INT4 group size. Plus the dispatch: AMX is opt-in
(``MONO_QUANT_ENABLE_AMX=1``) until it has run on AMX hardware, picked where it runs when enabled,
and ``MONO_QUANT_DISABLE_AMX`` / ``MONO_QUANT_DISABLE_SIMD`` turn it off. On an AMX CPU run
``MONO_QUANT_ENABLE_AMX=1 make test`` to test the real tiles.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mono_quant import _kernels as K

from test_linear_kernels import (
    assert_thread_count_free, check, dequant_int4, dequant_int8, make_int4, make_int8, small_int4, small_int8,
)

pytestmark = pytest.mark.skipif(not K.c_available(), reason="mono_quant._C is not built")

NEVER = 2**62  # use_linear_gemm_min_batch(NEVER): every batch on the rows kernels
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tile_paths():
    """Each tile path as a pytest param, skipped with the reason where this CPU cannot run it."""
    return [
        pytest.param("amx_emulated", marks=pytest.mark.skipif(
            not K.linear_isa_supported("amx_emulated"),
            reason="amx_emulated needs AVX-512 VNNI (its float epilogue is AVX-512)")),
        pytest.param("amx", marks=pytest.mark.skipif(
            not K.linear_isa_supported("amx"),
            reason="AMX is opt-in until it has run on AMX hardware: set MONO_QUANT_ENABLE_AMX=1 on a CPU/OS "
                   "with usable AMX-INT8 (CPUID AMX-TILE/AMX-INT8, XCR0 tile state, Linux arch_prctl "
                   "permission) to test it")),
    ]


TILE_PATHS = _tile_paths()


def run(isa, fn, *args, min_batch=1):
    with K.use_linear_isa(isa), K.use_linear_gemm_min_batch(min_batch):
        return fn(*args)


def vnni(fn, *args):
    """The avx512_vnni rows kernels: what the tile paths must equal bit for bit."""
    return run("avx512_vnni", fn, *args, min_batch=NEVER)


# n (not a multiple of 16 mostly), k (tails; > 1024: several k-chunks), batch rows (around the
# 16-row tile and the 64-row panel)
INT8_CASES = [(1, 1, 1), (17, 33, 16), (16, 64, 17), (40, 100, 5), (33, 1100, 33), (20, 2100, 70)]
INT4_CASES = [(17, 64, 32, 15), (16, 128, 64, 16), (33, 384, 128, 31), (5, 512, 256, 65),
              (24, 2048, 32, 18), (19, 2048, 256, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("isa", TILE_PATHS)
def test_int8_tiles_match_twin_and_vnni(isa, dtype):
    if not K.linear_isa_supported("avx512_vnni"):
        pytest.skip("the bit-for-bit reference needs avx512_vnni")
    gen = torch.Generator().manual_seed(21)
    for i, (n, k, m) in enumerate(INT8_CASES):
        q, scale, zp = make_int8(n, k, i % 2 == 0, gen)
        packed = K.pack_linear_int8(q, scale, zp)
        bias = torch.randn(n, generator=gen).to(dtype) if i % 3 else None
        x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
        y = run(isa, K.linear_int8, x, packed, n, k, bias)
        check(y, x, packed, dequant_int8(q, scale, zp), n, k, 0, bias)
        assert torch.equal(y, vnni(K.linear_int8, x, packed, n, k, bias)), f"n={n} k={k} m={m}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("isa", TILE_PATHS)
def test_int4_tiles_match_twin_and_vnni(isa, dtype):
    if not K.linear_isa_supported("avx512_vnni"):
        pytest.skip("the bit-for-bit reference needs avx512_vnni")
    gen = torch.Generator().manual_seed(22)
    for i, (n, k, g, m) in enumerate(INT4_CASES):
        q, scale, zp = make_int4(n, k, g, i % 2 == 1, gen)
        packed = K.pack_linear_int4(q, scale, zp, g)
        bias = torch.randn(n, generator=gen).to(dtype) if i % 2 else None
        x = torch.randn(m, k, generator=gen).to(dtype)
        y = run(isa, K.linear_int4, x, packed, n, k, g, bias)
        check(y, x, packed, dequant_int4(q, scale, zp, g), n, k, g, bias)
        assert torch.equal(y, vnni(K.linear_int4, x, packed, n, k, g, bias)), f"n={n} k={k} g={g} m={m}"


@pytest.mark.parametrize("isa", TILE_PATHS)
def test_tiles_take_a_huge_row_among_ordinary_ones(isa):
    """Rows whose float sums would overflow run as a sub-job of their own (linear.h); the tile
    kernel reads that sub-job's activations at an offset and must still agree."""
    gen = torch.Generator().manual_seed(23)
    n, k, g = 40, 256, 64
    q, scale, zp = small_int8(n, k, False, gen)  # results stay finite for x up to 3e38
    p8 = K.pack_linear_int8(q, scale, zp)
    q4, s4, z4 = small_int4(n, k, g, False, gen)
    p4 = K.pack_linear_int4(q4, s4, z4, g)
    x = torch.randn(35, k, generator=gen)
    x[[3, 20, 21, 34]] = 3e38  # shifted runs of one and two rows, one at the very end
    for fn, args, w_hat, gg in ((K.linear_int8, (p8, n, k), dequant_int8(q, scale, zp), 0),
                                (K.linear_int4, (p4, n, k, g), dequant_int4(q4, s4, z4, g), g)):
        y = run(isa, fn, x, *args)
        assert bool(torch.isfinite(y).all())
        check(y, x, args[0], w_hat, n, k, gg)
        if K.linear_isa_supported("avx512_vnni"):
            assert torch.equal(y, vnni(fn, x, *args))


@pytest.mark.parametrize("isa", TILE_PATHS)
def test_tiles_do_not_depend_on_thread_count(isa):
    assert_thread_count_free(run, isa, batch=20, seed=24)


@pytest.mark.parametrize("isa", TILE_PATHS)
def test_threshold_picks_the_kernel_and_both_agree(isa):
    """Below the path's threshold the rows kernels run, from it on the tiles: the same bits."""
    gen = torch.Generator().manual_seed(25)
    n, k = 48, 160
    packed = K.pack_linear_int8(*make_int8(n, k, True, gen))
    with K.use_linear_isa(isa):
        name, start = K.linear_batch_path()
        assert name == isa and start >= 1
        for m in (start - 1, start, start + 1):
            if m < 1:
                continue
            x = torch.randn(m, k, generator=gen)
            default = K.linear_int8(x, packed, n, k)
            with K.use_linear_gemm_min_batch(NEVER):
                rows = K.linear_int8(x, packed, n, k)
            with K.use_linear_gemm_min_batch(1):
                tiles = K.linear_int8(x, packed, n, k)
            assert torch.equal(default, rows) and torch.equal(default, tiles)


def test_batch_path_is_reported():
    feats = K.cpu_features()
    assert isinstance(feats["amx"], bool)
    text = K.linear_path_text()
    if feats["amx"]:
        assert K.linear_isa() == "amx" and K.linear_isas()[-1] == "amx"
        assert K.linear_batch_path() == ("amx", feats["linear_batch_min"])
        assert text == f"amx, batch >= {feats['linear_batch_min']}: amx"
    else:
        assert "amx" not in K.linear_isas() and not K.linear_isa_supported("amx")
        assert K.linear_batch_path() is None and text == K.linear_isa()
    from mono_quant.cli import version_text

    assert f"Linear kernel: {text})" in version_text()


def test_gemm_min_batch_hook_restores_and_refuses_negative():
    before = K.linear_batch_path()
    with K.use_linear_gemm_min_batch(3):
        pass
    assert K.linear_batch_path() == before
    with pytest.raises(ValueError, match="min_batch must be >= 0"):
        with K.use_linear_gemm_min_batch(-1):
            pass


def _features_with(env_var: str) -> list[str]:
    code = (
        "from mono_quant import _kernels as K, _C\n"
        "f = K.cpu_features()\n"
        "print(f['amx'], K.linear_isa(), K.linear_isa_supported('amx'), K.linear_isa_supported('amx_emulated'))\n"
        "try:\n    _C.set_linear_isa('amx'); print('accepted')\n"
        "except ValueError:\n    print('refused')\n"
    )
    env = {**os.environ, env_var: "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:2]


def test_amx_is_off_unless_enabled():
    """The AMX path has not run on AMX hardware yet: it is never picked unless asked for."""
    if os.environ.get("MONO_QUANT_ENABLE_AMX") == "1":
        pytest.skip("MONO_QUANT_ENABLE_AMX=1 is set: this run tests the AMX path itself")
    assert K.cpu_features()["amx"] is False
    assert "amx" not in K.linear_isas() and not K.linear_isa_supported("amx")


def test_disable_amx_turns_off_amx_alone():
    first, second = _features_with("MONO_QUANT_DISABLE_AMX")
    amx, isa, amx_ok, emulated_ok = first.split()
    assert amx == "False" and amx_ok == "False" and second == "refused"
    best_without_amx = [name for name in K.linear_isas() if name != "amx"][-1]
    assert isa == best_without_amx
    # the emulation runs no tile instruction: it stays available wherever AVX-512 VNNI is
    assert emulated_ok == str(K.linear_isa_supported("avx512_vnni"))


def test_disable_simd_turns_off_amx_too():
    first, second = _features_with("MONO_QUANT_DISABLE_SIMD")
    assert first == "False portable False False" and second == "refused"
