"""Peak memory of quantizing a model: a copy (the default), in place, and streaming a checkpoint.

    PYTHONPATH=. python benchmarks/bench_quantize_memory.py [--layers 16] [--size 4096] [--runs 3] [--methods ...]

The model is ``--layers`` x ``nn.Linear(size, size)`` (16 x 4096 x 4096 float32 = 1 GiB; the
largest layer is 64 MiB). Every measurement runs in a fresh subprocess, which reads its own
peak resident set size (``VmHWM`` in /proc/self/status; not ``ru_maxrss``, which Linux carries
over from the parent process across fork + exec):

- "copy":           ``dynamic_quantize(model, dtype, validate=False)``, the model built first.
- "copy + checks":  the same with the default end-of-run checks (save + load into a copy).
- "in place":       ``dynamic_quantize(model, dtype, inplace=True)`` (its checks: SQNR, ranges).
- "streaming":      ``quantize_checkpoint(file, out, dtype)`` from a float safetensors file;
                    the model is never built.

"extra" is peak RSS minus the RSS before the call (model built for the first three, imports
only for streaming): the memory the method needs on top of what the caller already holds.
Runs are interleaved (each round runs every method once) and the table shows medians, as
other processes share the machine. Printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
METHODS = ("copy", "copy + checks", "in place", "streaming")


def build(layers: int, size: int):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(size, size) for _ in range(layers)])


def child(method: str, dtype: str, layers: int, size: int, src: str, dst: str) -> None:
    """One measurement, printed as JSON (runs in the subprocess)."""
    import torch

    import mono_quant

    torch.set_num_threads(1)
    model = None if method == "streaming" else build(layers, size)
    before = _resident_bytes()
    start = time.perf_counter()
    if method == "streaming":
        mono_quant.quantize_checkpoint(src, dst, dtype)
    else:
        options = {"copy": dict(validate=False), "copy + checks": {}, "in place": dict(inplace=True)}[method]
        result, _ = mono_quant.dynamic_quantize(model, dtype, **options)
        del result
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds}))


def _resident_bytes() -> int:
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(method: str, dtype: str, args, src: str, dst: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, __file__, "--child", method, "--dtype", dtype, "--layers", str(args.layers),
                           "--size", str(args.size), "--src", src, "--dst", dst],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["int8", "int4"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child")
    parser.add_argument("--dtype")
    parser.add_argument("--src")
    parser.add_argument("--dst")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dtype, args.layers, args.size, args.src, args.dst)
        return
    import torch
    from safetensors.torch import save_file

    layer_mib = args.size * args.size * 4 / MIB
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({k: v.contiguous() for k, v in build(args.layers, args.size).state_dict().items()}, src)
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.runs):  # interleaved rounds: drift on a shared machine hits every method alike
            for dtype in args.dtypes:
                for method in args.methods:
                    results.setdefault((dtype, method), []).append(measure(method, dtype, args, src, dst))
    print(f"Model: {args.layers} x nn.Linear({args.size}, {args.size}) float32 = "
          f"{args.layers * layer_mib / 1024:.2f} GiB; largest layer {layer_mib:.0f} MiB. "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}; "
          f"medians of {args.runs} interleaved runs, one fresh process each.\n")
    print("| dtype | method | extra MiB (median, range) | extra / largest layer | seconds |")
    print("|---|---|---|---|---|")
    for (dtype, method), runs in results.items():
        extras = [(r["peak"] - r["before"]) / MIB for r in runs]
        seconds = statistics.median(r["seconds"] for r in runs)
        median = statistics.median(extras)
        print(f"| {dtype} | {method} | {median:.0f} ({min(extras):.0f}-{max(extras):.0f}) | "
              f"{median / layer_mib:.2f}x | {seconds:.1f} |")


if __name__ == "__main__":
    main()
