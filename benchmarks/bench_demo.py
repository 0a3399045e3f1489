"""End-to-end CPU latency of the demo model (MiniLM-L6) quantized by mono_quant, against fp32
and against torch's own ``torch.ao.quantization.quantize_dynamic`` of the same model.

    python benchmarks/bench_demo.py                      # print the table
    python benchmarks/bench_demo.py --append benchmarks/RESULTS.md

Batch 1 is one sentence (the demo's latency sentence, 14 tokens); batch 12 is the demo's
twelve sentences padded together. Every contender runs in the same process; the rounds are
interleaved (fp32, ours, torch's, ...) so that a change in machine load hits all of them,
and each cell is the median over rounds of per-round medians. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mono_quant import _kernels as K  # noqa: E402
from mono_quant import dynamic_quantize, static_quantize  # noqa: E402
from mono_quant.demo import SENTENCES, load_minilm  # noqa: E402
from mono_quant.demo_static import calibration_batches  # noqa: E402

TARGETS = {"mono_quant int8 (dynamic)": 1.5, "mono_quant int4 g128 (dynamic)": 1.3}


@torch.no_grad()
def median_ms(model: torch.nn.Module, batch: dict, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def contenders(model: torch.nn.Module, tokenizer) -> dict[str, torch.nn.Module]:
    out = {"torch fp32": model}
    out["mono_quant int8 (dynamic)"] = dynamic_quantize(model, "int8")[0]
    out["mono_quant int4 g128 (dynamic)"] = dynamic_quantize(model, "int4")[0]
    out["mono_quant int8 (static, mse)"] = static_quantize(
        model, calibration_batches(tokenizer), observer="mse", num_samples=40, progress=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; still the peer users have
        out["torch quantize_dynamic int8"] = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=30, help="calls per contender per round")
    ap.add_argument("--append", metavar="FILE", help="append the markdown table to FILE")
    args = ap.parse_args()

    model, tokenizer = load_minilm()
    models = contenders(model, tokenizer)
    batches = {
        1: tokenizer([SENTENCES[1]], return_tensors="pt"),
        12: tokenizer(list(SENTENCES), padding=True, return_tensors="pt"),
    }
    load_before = os.getloadavg()[0]
    cells: dict[tuple[str, int], list[float]] = {}
    for size, batch in batches.items():
        for m in models.values():  # warm up: packs weights, wakes thread pools
            median_ms(m, batch, 3)
        for _ in range(args.rounds):
            for name, m in models.items():
                cells.setdefault((name, size), []).append(median_ms(m, batch, args.calls))
    load_after = os.getloadavg()[0]

    ms = {key: statistics.median(v) for key, v in cells.items()}
    tokens = {size: int(b["input_ids"].shape[1]) for size, b in batches.items()}
    lines = [
        "# End to end: the demo model (MiniLM-L6), CPU",
        "",
        "Command: `python benchmarks/bench_demo.py" + (f" --append {args.append}`" if args.append else "`") + "  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {platform.processor() or platform.machine()}; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; mono_quant path `{K.linear_isa()}`  ",
        f"Median over {args.rounds} interleaved rounds of the median of {args.calls} forward calls. "
        f"Batch 1 = one sentence ({tokens[1]} tokens), batch 12 = twelve sentences padded to "
        f"{tokens[12]} tokens. Load average before/after: {load_before:.2f} / {load_after:.2f}.",
        "",
        "| model | batch 1 (ms) | vs fp32 | batch 12 (ms) | vs fp32 | target (batch 1) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in models:
        t1, t12 = ms[(name, 1)], ms[(name, 12)]
        s1, s12 = ms[("torch fp32", 1)] / t1, ms[("torch fp32", 12)] / t12
        target = TARGETS.get(name)
        verdict = "-" if target is None else f">= {target}x: {'met' if s1 >= target else 'MISSED'}"
        lines.append(f"| {name} | {t1:.2f} | {s1:.2f}x | {t12:.2f} | {s12:.2f}x | {verdict} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
