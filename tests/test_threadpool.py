"""The C thread pool under pressure: many Python threads calling kernels at once (the GIL is
released inside them), thread counts above the core count, and a forked child. Results must
equal a single-threaded run bit for bit."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mono_quant import _kernels as K

pytestmark = pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")


def _work(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 512, generator=gen)
    x = torch.randn(9, 512, generator=gen)
    scale, zp = K.qparams(*K.minmax(w, axis=0), torch.int8, symmetric=True)
    q = K.quantize(w, scale, zp, axis=0)
    packed8 = K.pack_linear_int8(q, scale, zp)
    qw4, s4, z4 = K.int4_quantize(w, 128)
    packed4 = K.pack_linear_int4(qw4, s4, z4, 128)
    return q, K.linear_int8(x, packed8, 256, 512), K.linear_int4(x, packed4, 256, 512, 128)


def _serial(seeds):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [_work(s) for s in seeds]
    finally:
        torch.set_num_threads(before)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_concurrent_callers_get_the_serial_results():
    seeds = list(range(12))
    expected = _serial(seeds)
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # more threads than this CI's cores: oversubscribed on purpose
    try:
        with ThreadPoolExecutor(max_workers=4) as ex:
            for _ in range(3):
                got = list(ex.map(_work, seeds))
                assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    finally:
        torch.set_num_threads(before)


def _child(queue) -> None:
    queue.put([t.tolist() for t in _work(3)])


@pytest.mark.skipif(os.name != "posix", reason="fork is POSIX only")
def test_a_forked_child_can_use_the_pool():
    expected = _work(3)  # the parent's workers exist now; the child has none of them
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    got = queue.get(timeout=120)
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert all(torch.equal(torch.tensor(g, dtype=e.dtype), e) for g, e in zip(got, expected, strict=True))


def _run_python(script: str, *args: str, env: dict | None = None, timeout: int = 300):
    """Run ``script`` in a fresh interpreter whose sys.argv[1:3] are the tests folder and the
    folder holding the mono_quant under test (put them on sys.path), then ``args``."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(K.__file__)))
    return subprocess.run([sys.executable, "-c", script, tests_dir, package_root, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_torch_openmp_team_and_own_pool_agree(tmp_path):
    """Jobs run on torch's libgomp team when it is loaded, else on mono_quant's own pool
    (MONO_QUANT_THREADPOOL=own forces that); both give the same bits."""
    kind = K.cpu_features()["threads"]
    assert kind in ("libgomp", "own")
    script = (
        "import sys, torch; sys.path[:0] = sys.argv[1:3]\n"
        "import test_threadpool as T\n"
        "from mono_quant import _kernels as K\n"
        "torch.set_num_threads(2)\n"
        "print(K.cpu_features()['threads'])\n"
        "torch.save(T._work(5), sys.argv[3])\n"
    )
    out = tmp_path / "own.pt"
    proc = _run_python(script, str(out), env=dict(os.environ, MONO_QUANT_THREADPOOL="own"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["own"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = _work(5)
    finally:
        torch.set_num_threads(before)
    assert _same(here, torch.load(out))


@pytest.mark.skipif(os.name != "posix", reason="fork is POSIX only")
def test_a_child_forked_before_any_kernel_ran_does_not_hang():
    """torch's OpenMP team exists in the parent (a torch op ran), mono_quant is imported but
    none of its kernels ran, then fork: the child's kernels must not wait on the parent's
    OpenMP threads (GNU OpenMP does not survive fork; torch's own parallel ops would hang
    there, which is why forked workers usually run torch with one thread)."""
    script = (
        "import os, sys, torch; sys.path[:0] = sys.argv[1:3]\n"
        "torch.set_num_threads(2)\n"
        "import test_threadpool as T\n"
        "torch.randn(512, 512) @ torch.randn(512, 512)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    T._work(7)\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    proc = _run_python(script, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---- backing off under load ------------------------------------------------------------------
# A parallel job whose caller waited for its helpers (to start, or to finish after the caller ran
# out of work) much longer than the work itself was contended: the next jobs run on the caller
# alone for a while, growing while probes keep waiting.  The rule is checked here on made-up
# times (a loaded machine cannot be summoned in a test); the benchmark shows it under a spinner.

MS = 1_000_000


def _step(until, backoff, start, began, done, end, idle=0):
    return K._C.threadpool_backoff_step(until, backoff, start, began, done, end, idle)


def test_a_quiet_job_keeps_running_in_parallel_and_shortens_the_backoff():
    # 1 ms of work, 20 us of waiting in all: quiet
    until, backoff, contended = _step(0, 64 * MS, 0, 10_000, 1 * MS + 10_000, 1 * MS + 20_000)
    assert not contended
    assert until == 0 and backoff == 56 * MS  # shortened by an eighth
    for _ in range(60):
        until, backoff, contended = _step(until, backoff, 0, 10_000, 1 * MS + 10_000, 1 * MS + 20_000)
    assert backoff == MS // 2  # never below the minimum


def test_a_long_wait_starts_a_backoff_that_grows_up_to_a_cap():
    # 0.2 ms of work, then 5 ms waiting for a helper with no core
    until, backoff, contended = _step(0, 2 * MS, 0, 0, 200_000, 5_200_000)
    assert contended and until == 5_200_000 + 2 * MS and backoff == 8 * MS
    for _ in range(12):
        until, backoff, contended = _step(until, backoff, 0, 0, 200_000, 5_200_000)
    assert contended and backoff == 256 * MS


def test_waiting_for_the_team_to_start_counts_as_waiting():
    """libgomp docks its threads at a barrier: a helper without a core holds up the start."""
    _, _, contended = _step(0, 2 * MS, 0, 4 * MS, 4 * MS + 300_000, 4 * MS + 310_000)
    assert contended


def test_waking_helpers_after_an_idle_spell_is_not_load():
    """After a millisecond without parallel jobs the helpers sleep: waking one may take a few
    hundred microseconds on a quiet machine, not a scheduler slice."""
    quiet_wake = (0, 2 * MS, 0, 0, 200_000, 700_000)  # 0.2 ms of work, 0.5 ms waking a helper
    assert _step(*quiet_wake, idle=0)[2]  # back to back, that wait would be load
    assert not _step(*quiet_wake, idle=5 * MS)[2]
    # a probe after a back-off under real load waits a slice: still contended
    assert _step(0, 2 * MS, 0, 0, 200_000, 4_200_000, idle=5 * MS)[2]


def test_the_threshold_scales_with_the_work():
    # a 40 ms job (a big GEMM) may wait 5 ms for one chunk on a quiet machine: not contended
    assert not _step(0, 2 * MS, 0, 0, 40 * MS, 45 * MS)[2]
    assert _step(0, 2 * MS, 0, 0, 40 * MS, 52 * MS)[2]


def test_jobs_run_while_backing_off_give_the_parallel_results():
    expected = _serial([11])[0]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = _work(11)
        stats0 = K._C.threadpool_stats()
        K._C.threadpool_back_off_for(60.0)
        backed_off = _work(11)
        stats1 = K._C.threadpool_stats()
    finally:
        K._C.threadpool_back_off_for(0.0)
        torch.set_num_threads(before)
    assert _same(parallel, expected) and _same(backed_off, expected)
    assert stats1["serial_under_load"] > stats0["serial_under_load"]
    assert stats1["parallel_jobs"] == stats0["parallel_jobs"]


def test_backing_off_can_be_turned_off():
    before_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    previous = K._C.threadpool_set_backoff(False)
    try:
        K._C.threadpool_back_off_for(60.0)  # ignored while off
        stats0 = K._C.threadpool_stats()
        assert stats0["backoff"] is False
        got = _work(12)
        stats1 = K._C.threadpool_stats()
        assert stats1["serial_under_load"] == stats0["serial_under_load"]
    finally:
        K._C.threadpool_set_backoff(previous)
        torch.set_num_threads(before_threads)
    assert _same(got, _serial([12])[0])


def test_the_environment_variable_turns_backing_off_off():
    script = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from mono_quant import _kernels as K\n"
        "print(K._C.threadpool_stats()['backoff'])\n"
    )
    proc = _run_python(script, env=dict(os.environ, MONO_QUANT_LOAD_BACKOFF="0"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]


def test_back_off_for_rejects_bad_durations():
    for bad in (-1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(ValueError, match="seconds must be in 0..3600"):
            K._C.threadpool_back_off_for(bad)
