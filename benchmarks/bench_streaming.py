"""Peak memory of quantize_checkpoint (streaming) against quantizing the loaded state_dict.

    PYTHONPATH=. python benchmarks/bench_streaming.py [--layers 24] [--rows 1024] [--cols 4096]

Writes a float32 checkpoint of ``--layers`` Linear-like layers (weight ``[rows, cols]`` plus a
bias) to a temporary folder, then runs each method in a fresh subprocess and reads that
process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``). "baseline"
is the resident size right after ``import torch, mono_quant`` in the same process (VmRSS);
"extra" is peak minus baseline, the memory the method itself needed. Each method runs
``--runs`` times (the allocator makes single runs vary); the table shows the median run (by
extra memory). It is printed and written to benchmarks/STREAMING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
METHODS = {
    "stream int8": ("stream", "int8"),
    "stream int4": ("stream", "int4"),
    "stream fp16": ("stream", "fp16"),
    "in memory int8": ("memory", "int8"),
}


def child(method: str, dtype: str, src: str, dst: str) -> None:
    """Run one method and print its measurements as JSON (runs in the subprocess)."""
    import torch

    import mono_quant
    from mono_quant.schemes.registry import scheme_names

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    baseline = _resident_bytes()
    if dtype not in scheme_names():
        print(json.dumps({"missing": f"no {dtype!r} scheme in this build"}))
        return
    start = time.perf_counter()
    if method == "stream":
        mono_quant.quantize_checkpoint(src, dst, dtype, validate=False)
    else:
        from safetensors.torch import load_file

        quantized, info = mono_quant.dynamic_quantize(load_file(src), dtype, validate=False)
        mono_quant.save_quantized(quantized, dst, info)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "seconds": seconds, "out": os.path.getsize(dst)}))


def _resident_bytes() -> int:
    """The current resident set size (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_checkpoint(path: Path, layers: int, rows: int, cols: int) -> int:
    """A float32 checkpoint written one layer at a time (so this process stays small too)."""
    import torch

    from mono_quant._safetensors import StreamingWriter

    generator = torch.Generator().manual_seed(0)
    with StreamingWriter(path) as writer:
        for i in range(layers):
            writer.write(f"layers.{i}.weight", torch.randn(rows, cols, generator=generator))
            writer.write(f"layers.{i}.bias", torch.randn(rows, generator=generator))
        writer.finish({})
    return rows * cols * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("STREAMING.md")))
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "DTYPE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="mono_quant_bench_") as folder:
        for layers in args.layers:
            src = Path(folder) / f"model-{layers}.safetensors"
            largest = write_checkpoint(src, layers, args.rows, args.cols)
            size = src.stat().st_size
            for label, (method, dtype) in METHODS.items():
                rows.append((layers, size, largest, label, "", _measure(args.runs, method, dtype, src, folder, {})))
            for label in ("stream int8", "stream int4", "stream fp16"):
                method, dtype = METHODS[label]
                rows.append((layers, size, largest, label, FIXED_THRESHOLD,
                             _measure(args.runs, method, dtype, src, folder, dict([FIXED_THRESHOLD.split("=")]))))
            src.unlink()
    command = "PYTHONPATH=. python benchmarks/bench_streaming.py" + "".join(
        f" --{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in (("layers", args.layers), ("rows", args.rows), ("cols", args.cols), ("runs", args.runs))
        if v != parser.get_default(k))
    text = report(rows, args, command)
    print(text)
    Path(args.out).write_text(text + "\n")


FIXED_THRESHOLD = "MALLOC_MMAP_THRESHOLD_=1048576"


def _measure(runs: int, method: str, dtype: str, src: Path, folder: str, env: dict) -> list[dict]:
    """``runs`` results of one method, each in a fresh process, sorted by extra memory."""
    dst = Path(folder) / f"{method}-{dtype}.safetensors"
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, __file__, "--child", method, dtype, str(src), str(dst)],
                              capture_output=True, text=True, check=True, env={**os.environ, **env})
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        dst.unlink(missing_ok=True)
    return sorted(results, key=lambda r: r.get("peak", 0) - r.get("baseline", 0))


def report(rows, args, command: str) -> str:
    lines = [
        "# Streaming quantization: peak memory",
        "",
        f"Command: `{command}`",
        "",
        f"Checkpoints: {' and '.join(map(str, args.layers))} Linear-like layers, each a float32 weight "
        f"[{args.rows}, {args.cols}] ({args.rows * args.cols * 4 / MIB:.0f} MiB, the largest tensor) plus a bias.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Each method ran "
        f"{args.runs} times in a fresh process; peak = ru_maxrss, baseline = VmRSS after the imports,",
        "extra = peak - baseline (median run, and the range over the runs).",
        "",
        "| checkpoint | method | environment | baseline MiB | peak MiB | extra MiB (range) | extra / largest tensor "
        "| output MiB | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layers, size, largest, label, env, results in rows:
        where = f"{layers} layers, {size / MIB:.0f} MiB"
        if "missing" in results[0]:
            lines.append(f"| {where} | {label} | | - | - | - | - | - | {results[0]['missing']} |")
            continue
        extras = [(r["peak"] - r["baseline"]) / MIB for r in results]
        r = results[len(results) // 2]
        extra = (r["peak"] - r["baseline"]) / MIB
        lines.append(f"| {where} | {label} | {env or 'default'} | {r['baseline'] / MIB:.0f} | {r['peak'] / MIB:.0f} "
                     f"| {extra:.0f} ({min(extras):.0f}-{max(extras):.0f}) | {extra * MIB / largest:.1f}x "
                     f"| {r['out'] / MIB:.0f} | {r['seconds']:.1f} |")
    lines += [
        "",
        "\"stream\" is `quantize_checkpoint`: one layer in memory at a time, each output tensor written",
        "as soon as it exists, the header written last (the data goes to a scratch file first). Each",
        "layer's file is opened with `safe_open` for that layer only, because pages of a mapped file count",
        "towards the process while it stays open. Its extra memory does not grow with the checkpoint: it",
        "is a few times the largest tensor (the float weight as read, its quantized form, the dequantized",
        "copy for the SQNR, the scheme's temporaries). glibc's adaptive mmap threshold keeps some freed",
        f"blocks in the heap, which makes single runs vary; with `{FIXED_THRESHOLD}` they do not.",
        "\"in memory\" loads the whole state_dict with `safetensors.torch.load_file`, runs",
        "`dynamic_quantize` and `save_quantized`: its extra memory grows with the checkpoint.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
