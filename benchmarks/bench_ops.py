"""What calling the C kernels through registered torch operators costs, end to end on the demo
model (MiniLM-L6): the modules as shipped (plain eager calls skip the dispatcher, see
``_ops.plain_eager``), the same modules forced through the dispatcher on every call (what a
trace or a dispatch mode runs), the modules with ``forward`` patched to call the C kernel
directly (what they did before the operators), and ``torch.compile`` of the shipped modules.

    python benchmarks/bench_ops.py
    python benchmarks/bench_ops.py --append benchmarks/RESULTS.md

Every contender runs in one process; rounds are interleaved so a change in machine load hits all
of them; each cell is the median over rounds of per-round medians. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import contextlib
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
from mono_quant import _ops  # noqa: E402
from mono_quant import dynamic_quantize, static_quantize  # noqa: E402
from mono_quant.demo import SENTENCES, load_minilm  # noqa: E402
from mono_quant.demo_static import calibration_batches  # noqa: E402
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4, StaticQuantizedLinear  # noqa: E402

BUDGET = 1.05  # the operators may cost at most 5% of batch-1 latency


def _direct_int8(self, x):
    return K.linear_packed(x, self.packed, self.out_features, self.in_features, 0, self.bias)


def _direct_int4(self, x):
    return K.linear_packed(x, self.packed, self.out_features, self.in_features, self.group_size, self.bias)


def _direct_static(self, x):
    xq = K.quantize(x, self.input_scale, self.input_zero_point, axis=None, qdtype=self.input_qdtype)
    return K.linear_static(xq, self.input_scale, self.input_zero_point, self.qweight, self.scale,
                           self.zero_point, self.bias, x.dtype)


DIRECT = {QuantizedLinear: _direct_int8, QuantizedLinearInt4: _direct_int4, StaticQuantizedLinear: _direct_static}


@contextlib.contextmanager
def direct_calls():
    """The quantized Linear modules call C directly (no operator, no input check)."""
    saved = {cls: cls.forward for cls in DIRECT}
    try:
        for cls, fn in DIRECT.items():
            cls.forward = fn
        yield
    finally:
        for cls, fn in saved.items():
            cls.forward = fn


@contextlib.contextmanager
def through_dispatcher():
    """Every operator call goes through torch's dispatcher, as in a trace or a dispatch mode."""
    saved = _ops.plain_eager
    _ops.plain_eager = lambda x: False
    try:
        yield
    finally:
        _ops.plain_eager = saved


@torch.no_grad()
def median_ms(model: torch.nn.Module, batch: dict, calls: int, how: str) -> float:
    times = []
    context = {"direct": direct_calls, "dispatcher": through_dispatcher}.get(how, contextlib.nullcontext)
    with context():
        for _ in range(calls):
            start = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=30, help="calls per contender per round")
    ap.add_argument("--append", metavar="FILE", help="append the markdown table to FILE")
    args = ap.parse_args()

    model, tokenizer = load_minilm()
    quantized = {
        "int8 (dynamic)": dynamic_quantize(model, "int8", validate=False)[0],
        "int4 g128 (dynamic)": dynamic_quantize(model, "int4", validate=False)[0],
        "int8 (static)": static_quantize(model, calibration_batches(tokenizer), observer="mse", num_samples=40,
                                         progress=False, validate=False)[0],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = {name: torch.compile(m, fullgraph=True) for name, m in quantized.items()}
    batches = {1: dict(tokenizer([SENTENCES[1]], return_tensors="pt")),
               12: dict(tokenizer(list(SENTENCES), padding=True, return_tensors="pt"))}
    routes = {"shipped": (quantized, "shipped"), "dispatcher": (quantized, "dispatcher"),
              "direct": (quantized, "direct"), "compile": (compiled, "shipped")}
    load_before = os.getloadavg()[0]
    cells: dict[tuple[str, str, int], list[float]] = {}
    for size, batch in batches.items():
        for models, how in routes.values():  # warm up (and compile)
            for m in models.values():
                median_ms(m, batch, 3, how)
        for _ in range(args.rounds):
            for route, (models, how) in routes.items():
                for name, m in models.items():
                    cells.setdefault((name, route, size), []).append(median_ms(m, batch, args.calls, how))
    load_after = os.getloadavg()[0]
    ms = {key: statistics.median(v) for key, v in cells.items()}

    lines = [
        "# Operator dispatch: MiniLM-L6 end to end, CPU",
        "",
        "Command: `python benchmarks/bench_ops.py" + (f" --append {args.append}`" if args.append else "`") + "  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {platform.processor() or platform.machine()}; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; mono_quant path `{K.linear_isa()}`  ",
        f"Median over {args.rounds} interleaved rounds of the median of {args.calls} forward calls; batch 1 = "
        f"{batches[1]['input_ids'].shape[1]} tokens, batch 12 = 12 sentences padded to "
        f"{batches[12]['input_ids'].shape[1]}. Load average before/after: {load_before:.2f} / {load_after:.2f}.",
        "",
        "| model | batch | modules as shipped (ms) | every call through the dispatcher (ms) | direct C calls (ms) "
        "| shipped / direct | budget | torch.compile (ms) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in quantized:
        for size in batches:
            op, disp, direct, comp = (ms[(name, route, size)] for route in ("shipped", "dispatcher", "direct", "compile"))
            verdict = "-" if size != 1 else f"<= {BUDGET:.2f}: {'met' if op / direct <= BUDGET else 'MISSED'}"
            lines.append(f"| {name} | {size} | {op:.2f} | {disp:.2f} | {direct:.2f} | {op / direct:.3f} | {verdict} "
                         f"| {comp:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
