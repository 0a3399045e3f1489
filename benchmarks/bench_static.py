"""Static INT8 against dynamic INT8 and fp32, side by side: single Linear layers at several
batch sizes, and the demo model (MiniLM-L6) end to end.

    python benchmarks/bench_static.py                          # print the tables
    python benchmarks/bench_static.py --append benchmarks/RESULTS.md
    python benchmarks/bench_static.py --skip-large             # MiniLM shapes only (quick)
    python benchmarks/bench_static.py --threads 1 --clock cpu --stat p20 --rounds 9
                                       # CPU time of one thread, 20th percentile of each round:
                                       # what RESULTS.md holds (the machine is shared)

Layers: ``F.linear`` (fp32), ``QuantizedLinear`` (dynamic INT8: activations quantized per
block of 32 at run time) and ``StaticQuantizedLinear`` (static INT8: one calibrated scale and
zero point) built from the same ``nn.Linear``, called on the same input. End to end: the
demo model in fp32, ``dynamic_quantize(model, "int8")`` and ``static_quantize`` (mse
observer, as ``bench_demo.py``). Every contender runs in the same process and the rounds are
interleaved (fp32, dynamic, static, fp32, ...), so a change in machine load hits all of them;
each cell is the median over rounds of per-round medians. ``--clock cpu`` (with ``--threads
1``: every kernel then runs on the calling thread) times the calling thread's CPU time instead
of the wall clock, so that time spent waiting for a core on a shared machine does not count;
``--stat p20`` takes each round's 20th-percentile call instead of its median. A benchmark,
never a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_name  # noqa: E402
from mono_quant import _kernels as K  # noqa: E402
from mono_quant.nn import QuantizedLinear, StaticQuantizedLinear  # noqa: E402

LARGE = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): Llama-7B projections
MINILM = [(384, 384), (1536, 384), (384, 1536)]  # attention, FFN up, FFN down
BATCHES = (1, 8, 32, 180)  # 180 = MiniLM batch 12 x 15 tokens
CONTENDERS = ("fp32", "dynamic int8", "static int8")



CLOCK = time.perf_counter  # or time.thread_time (--clock cpu)
QUANTILE = 0.5  # of the calls in a round: the median, or 0.2 (--stat p20)


def median_s(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    if QUANTILE == 0.5:
        return statistics.median(times)
    return sorted(times)[int(QUANTILE * (len(times) - 1))]


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, budget_s: float) -> dict[str, float]:
    """Median over `rounds` interleaved rounds of each function's median call time (s); the
    calls per round are sized from a first timing so that a round takes about `budget_s`."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm up: first-call allocations, thread wake-up
        calls[name] = max(3, min(200, int(budget_s / max(median_s(fn, 3), 1e-6))))
    cells: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            cells[name].append(median_s(fn, calls[name]))
    return {name: statistics.median(v) for name, v in cells.items()}


@torch.no_grad()
def layer_rows(shapes: list[tuple[int, int]], rounds: int, budget_s: float) -> list[str]:
    rows = []
    for n, k in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(k, n)
        dynamic = QuantizedLinear.from_float(linear)
        static = StaticQuantizedLinear.from_float(linear, input_range=(-3.0, 3.0))
        for m in BATCHES:
            x = torch.randn(m, k)
            fns = {"fp32": lambda: F.linear(x, linear.weight, linear.bias), "dynamic int8": lambda: dynamic(x),
                   "static int8": lambda: static(x)}
            t = interleaved(fns, rounds, budget_s)
            fp, dy, st = (1e3 * t[c] for c in CONTENDERS)
            rows.append(f"| {n}x{k} | {m} | {fp:.3f} | {dy:.3f} | {st:.3f} | {fp / st:.2f}x | {fp / dy:.2f}x | "
                        f"**{dy / st:.2f}x** |")
            print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def minilm_rows(rounds: int, calls: int) -> list[str]:
    from mono_quant import dynamic_quantize, static_quantize
    from mono_quant.demo import SENTENCES, load_minilm
    from mono_quant.demo_static import calibration_batches

    model, tokenizer = load_minilm()
    models = {
        "fp32": model,
        "dynamic int8": dynamic_quantize(model, "int8")[0],
        "static int8": static_quantize(model, calibration_batches(tokenizer), observer="mse", num_samples=40,
                                       progress=False)[0],
    }
    batches = {1: tokenizer([SENTENCES[1]], return_tensors="pt"),
               12: tokenizer(list(SENTENCES), padding=True, return_tensors="pt")}
    rows = []
    for size, batch in batches.items():
        fns = {name: (lambda m=m: m(**batch)) for name, m in models.items()}
        for fn in fns.values():
            median_s(fn, 3)
        cells: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                cells[name].append(median_s(fn, calls))
        fp, dy, st = (1e3 * statistics.median(cells[c]) for c in CONTENDERS)
        tokens = int(batch["input_ids"].shape[1])
        rows.append(f"| MiniLM-L6, batch {size} ({tokens} tokens) | {fp:.2f} | {dy:.2f} | {st:.2f} | "
                    f"{fp / st:.2f}x | {fp / dy:.2f}x | **{dy / st:.2f}x** |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.05, help="seconds per contender per round (layers)")
    ap.add_argument("--calls", type=int, default=20, help="calls per contender per round (MiniLM)")
    ap.add_argument("--skip-large", action="store_true", help="only the MiniLM shapes and model")
    ap.add_argument("--skip-minilm", action="store_true", help="only the layer table")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (mono_quant follows it)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: the calling thread's CPU time (needs --threads 1)")
    ap.add_argument("--stat", choices=("median", "p20"), default="median",
                    help="per round: the median call, or the 20th percentile (less of the load of a busy machine)")
    ap.add_argument("--append", metavar="FILE", help="append the markdown tables to FILE")
    args = ap.parse_args()
    global QUANTILE
    QUANTILE = 0.5 if args.stat == "median" else 0.2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            ap.error("--clock cpu times the calling thread only: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time

    load_before = os.getloadavg()
    shapes = MINILM if args.skip_large else LARGE + MINILM
    header = ["| layer (out x in) | batch | fp32 (ms) | dynamic int8 (ms) | static int8 (ms) | static vs fp32 | "
              "dynamic vs fp32 | static vs dynamic |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(header), flush=True)
    layer = layer_rows(shapes, args.rounds, args.budget)
    model: list[str] = []
    if not args.skip_minilm:
        print("| model | fp32 (ms) | dynamic int8 (ms) | static int8 (ms) | static vs fp32 | dynamic vs fp32 | "
              "static vs dynamic |\n|---|---:|---:|---:|---:|---:|---:|", flush=True)
        model = minilm_rows(args.rounds, args.calls)
    load_after = os.getloadavg()

    command = " ".join(["python benchmarks/bench_static.py", *sys.argv[1:]])
    lines = [
        "# Static INT8 vs dynamic INT8 vs fp32 (layers and MiniLM-L6), CPU",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {cpu_name()}; {torch.get_num_threads()} "
        f"thread{'s' if torch.get_num_threads() != 1 else ''}; torch {torch.__version__}; mono_quant paths: dynamic `{K.linear_isa()}`, static "
        f"`{K.linear_static_isa()}`  ",
        f"Median over {args.rounds} interleaved rounds (fp32, dynamic, static) of the "
        f"{'median' if args.stat == 'median' else '20th-percentile'} call time "
        f"({'CPU time of the calling thread' if args.clock == 'cpu' else 'wall clock'}). "
        f"Ratios are speed-ups (time of the other / time of the first named; > 1: the first is faster). "
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.2f}' for v in load_after)} (the machine is shared with other jobs: near or above "
        f"the core count, timings are noisy).",
        "",
        *header, *layer,
    ]
    if model:
        lines += ["", "| model | fp32 (ms) | dynamic int8 (ms) | static int8 (ms) | static vs fp32 | dynamic vs fp32 | "
                  "static vs dynamic |", "|---|---:|---:|---:|---:|---:|---:|", *model]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
