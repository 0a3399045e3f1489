"""Quantized Linear under load: does a 2-thread call collapse when another process is busy?

    python benchmarks/bench_load.py                    # print the table
    python benchmarks/bench_load.py --write benchmarks/RESULTS.md

With another process spinning on one core of a 2-core machine, a parallel call used to end at
the thread team's barrier waiting for a helper thread that had no core: a whole scheduler
slice (milliseconds) on a 0.2-1 ms call.  mono_quant now measures each parallel job's wait and
runs the next jobs on the calling thread alone while waits stay long (threadpool.h, "backing
off under load").  The target (issue 15): under one competing busy process, a 2-thread call
takes at most 1.25x the 1-thread call under the same load, and a quiet machine loses nothing.

The benchmark starts the competing process itself (one Python busy loop).  For each layer
(4096x4096, INT8 and INT4 g128) and batch (1 and 32), it times calls on 1 thread, 2 threads
with backing off, and 2 threads with backing off turned off (the old behaviour), interleaved
round by round, first on the quiet machine and then with the spinner; torch's fp32 F.linear
and quantize_dynamic are timed the same way for comparison (they cannot back off).  Medians
and means of all calls: the mean includes the occasional probe that finds the load still there.
A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_name, write_section  # noqa: E402
from mono_quant import _kernels as K  # noqa: E402

N = K_IN = 4096
GROUP = 128
COPIES = 4  # distinct layers per contender, so no call runs from cache



def contenders() -> list[tuple[str, bool, list, Callable]]:
    """(name, backs off, layers, call(layer, x))."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K_IN, generator=gen) * 0.02
    s8 = w.abs().amax(1) / 127
    q8 = torch.round(w / s8[:, None]).clamp(-127, 127).to(torch.int8)
    p8 = K.pack_linear_int8(q8, s8, torch.zeros(N, dtype=torch.int32))
    qw4, sc4, zp4 = K.int4_quantize(w, GROUP)
    p4 = K.pack_linear_int4(qw4, sc4, zp4, GROUP)
    qd = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(K_IN, N)), {nn.Linear}, dtype=torch.qint8)
    return [
        ("mono_quant int8", True, [p8.clone() for _ in range(COPIES)], lambda p, x: K.linear_int8(x, p, N, K_IN)),
        (f"mono_quant int4 g{GROUP}", True, [p4.clone() for _ in range(COPIES)],
         lambda p, x: K.linear_int4(x, p, N, K_IN, GROUP)),
        ("torch fp32 F.linear", False, [w.clone() for _ in range(2)], lambda p, x: F.linear(x, p)),
        ("torch quantize_dynamic int8", False, [qd[0]], lambda p, x: p(x)),
    ]


def time_calls(call: Callable, layers: list, x: torch.Tensor, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(layers[i % len(layers)], x)
        out.append(time.perf_counter() - t0)
    return out


MODES = [("1 thread", 1, True), ("2 threads", 2, True), ("2 threads, no back-off", 2, False)]


def measure(rounds: int, calls: int, batches: list[int]) -> dict:
    """times[(contender, batch, mode)] -> list of seconds, modes interleaved round by round."""
    times: dict = {}
    cons = contenders()
    for r in range(rounds):
        for name, backs_off, layers, call in cons:
            for m in batches:
                x = torch.randn(m, K_IN)
                # every other round in reverse, so no mode always follows the 1-thread one
                # (whose calls leave the helper thread asleep and its cache cold)
                for label, threads, backoff in (MODES if r % 2 == 0 else MODES[::-1]):
                    if not backs_off and not backoff:
                        continue  # torch's ops have no such switch
                    torch.set_num_threads(threads)
                    K._C.threadpool_set_backoff(backoff)
                    call(layers[0], x)  # warm this configuration
                    times.setdefault((name, m, label), []).extend(time_calls(call, layers, x, calls))
    K._C.threadpool_set_backoff(True)
    torch.set_num_threads(2)
    return times


def start_spinner() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    return proc


def table(quiet: dict, loaded: dict, batches: list[int]) -> list[str]:
    names = [c for c in dict.fromkeys(k[0] for k in quiet)]
    out = ["| layer | batch | machine | 1 thread (ms, median / mean) | 2 threads (ms) | 2 threads / 1 thread (median, mean) "
           "| 2 threads, no back-off (ms) | no back-off / 1 thread (median) |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in names:
        for m in batches:
            for machine, times in (("quiet", quiet), ("1 busy process", loaded)):
                one = times[(name, m, "1 thread")]
                two = times[(name, m, "2 threads")]
                off = times.get((name, m, "2 threads, no back-off"))
                med1, med2 = statistics.median(one), statistics.median(two)
                mean1, mean2 = statistics.mean(one), statistics.mean(two)
                off_cells = (f"{statistics.median(off) * 1e3:.3f} / {statistics.mean(off) * 1e3:.3f} | "
                             f"{statistics.median(off) / med1:.2f}x") if off else "- | -"
                out.append(f"| {name} | {m} | {machine} | {med1 * 1e3:.3f} / {mean1 * 1e3:.3f} | "
                           f"{med2 * 1e3:.3f} / {mean2 * 1e3:.3f} | {med2 / med1:.2f}x, {mean2 / mean1:.2f}x | {off_cells} |")
    return out


def targets(quiet: dict, loaded: dict, batches: list[int]) -> list[str]:
    out = ["| target | measured | met |", "|---|---|---|"]
    for name in ("mono_quant int8", f"mono_quant int4 g{GROUP}"):
        for m in batches:
            one, two = loaded[(name, m, "1 thread")], loaded[(name, m, "2 threads")]
            med = statistics.median(two) / statistics.median(one)
            mean = statistics.mean(two) / statistics.mean(one)
            out.append(f"| {name} batch {m} under load: 2 threads <= 1.25x 1 thread | median {med:.2f}x, mean {mean:.2f}x | "
                       f"{'yes' if med <= 1.25 and mean <= 1.25 else 'NO'} |")
            q_on, q_off = quiet[(name, m, "2 threads")], quiet[(name, m, "2 threads, no back-off")]
            r = statistics.median(q_on) / statistics.median(q_off)
            out.append(f"| {name} batch {m} quiet: back-off loses nothing (2 threads with / without) | {r:.2f}x | "
                       f"{'yes' if r <= 1.05 else 'NO'} |")
    return out



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--calls", type=int, default=30, help="calls per configuration per round (default 30)")
    ap.add_argument("--write", metavar="FILE", help="put the table in FILE (replacing an earlier run's)")
    args = ap.parse_args()
    if not K.c_available():
        raise SystemExit("the C extension is not built: run `make build` first")
    batches = [1, 32]
    load_before = os.getloadavg()[0]
    quiet = measure(args.rounds, args.calls, batches)
    spinner = start_spinner()
    try:
        loaded = measure(args.rounds, args.calls, batches)
    finally:
        spinner.kill()
        spinner.wait()
    load_after = os.getloadavg()[0]
    stats = K._C.threadpool_stats()
    lines = [
        "## Under load: 2 threads vs 1 thread with a competing busy process",
        "",
        "Command: `python benchmarks/bench_load.py --write benchmarks/RESULTS.md`  ",
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%dT%H:%M')}; {cpu_name()}; {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}; mono_quant path `{K.linear_isa()}`, threads `{K.cpu_features()['threads']}`  ",
        f"{args.rounds} interleaved rounds x {args.calls} calls per cell, 4096x4096 layers (each contender "
        f"rotating through distinct copies), float32 activations. \"1 busy process\": a Python busy loop started "
        f"by the benchmark. Load average before/after: {load_before:.2f} / {load_after:.2f}. "
        f"Jobs found contended in the run: {stats['contended_jobs']} of {stats['parallel_jobs']} parallel jobs; "
        f"{stats['serial_under_load']} jobs ran on the caller alone while backing off.",
        "",
        *table(quiet, loaded, batches),
        "",
        *targets(quiet, loaded, batches),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "bench_load", text)


if __name__ == "__main__":
    main()
