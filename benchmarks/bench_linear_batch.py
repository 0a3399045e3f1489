"""Linear batch kernels against the row kernels, side by side: where the batch path starts to win.

    python benchmarks/bench_linear_batch.py            # Llama-7B and MiniLM shapes, batch 1..180
    python benchmarks/bench_linear_batch.py --quick    # fewer repeats

For the best Linear path of this CPU, each cell times the same layer and input two ways,
interleaved call by call: the path's row kernels (a few batch rows per pass over the weights;
``use_linear_gemm_min_batch(2**62)``) and its batch kernel (``use_linear_gemm_min_batch(1)``:
AMX tiles on CPUs with AMX-INT8), median of the repeats, and prints the ratio. The threshold
the path ships with (``linear_batch_path()``) should sit where the ratio passes 1. On a CPU
whose path has no batch kernel (avx512_vnni, avx2) it says so and times the row kernels alone.
A benchmark, never a test: nothing here gates anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_name  # noqa: E402
from mono_quant import _kernels as K  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (384, 1536), (1536, 384)]
BATCHES = [1, 4, 8, 16, 32, 64, 180]
GROUP = 128
NEVER = 2**62



def layers(n: int, k: int, gen: torch.Generator) -> dict[str, tuple]:
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    p8 = K.pack_linear_int8(q, torch.rand(n, generator=gen) * 0.01 + 1e-3, torch.zeros(n, dtype=torch.int32))
    nib = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    s4 = (torch.rand(n, k // GROUP, generator=gen) * 0.01 + 1e-3).half()
    p4 = K.pack_linear_int4(nib, s4, torch.full((n, k // GROUP), 8, dtype=torch.uint8), GROUP)
    return {"int8": (K.linear_int8, p8, n, k), "int4": (K.linear_int4, p4, n, k, GROUP)}


def time_pair(call, x, repeats: int, has_batch: bool) -> tuple[float, float | None]:
    """Median seconds of the row kernels and of the batch kernel, interleaved."""
    rows, batch = [], []
    fn, *args = call
    for _ in range(repeats):
        for threshold, sink in ((NEVER, rows), (1, batch)) if has_batch else ((NEVER, rows),):
            with K.use_linear_gemm_min_batch(threshold):
                fn(x, *args)  # warm this kernel's working set
                t = time.perf_counter()
                fn(x, *args)
                sink.append(time.perf_counter() - t)
    return statistics.median(rows), statistics.median(batch) if has_batch else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    if not K.c_available():
        raise SystemExit("the C extension is not built: run `make build`")
    repeats = 5 if args.quick else 15
    gen = torch.Generator().manual_seed(0)
    batch = K.linear_batch_path()
    print(f"# Linear batch kernel vs row kernels ({cpu_name()}, {torch.get_num_threads()} threads)\n")
    print(f"Path: `{K.linear_path_text()}`; median of {repeats} interleaved calls per cell; "
          f"load average {os.getloadavg()[0]:.2f} (near the core count: noisy).\n")
    if batch is None:
        print(f"The `{K.linear_isa()}` path has no batch kernel: row kernels only.\n")
        print("| out x in | batch | int8 ms | int4 ms |\n|---|---:|---:|---:|")
    else:
        print(f"| out x in | batch | int8 rows ms | int8 {batch[0]} ms | ratio | int4 rows ms | "
              f"int4 {batch[0]} ms | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for n, k in SHAPES:
            calls = layers(n, k, gen)
            for m in BATCHES:
                x = torch.randn(m, k, generator=gen)
                cells = []
                for name in ("int8", "int4"):
                    rows, tiles = time_pair(calls[name], x, repeats, batch is not None)
                    cells += [f"{rows * 1e3:.3f}"] if tiles is None else [
                        f"{rows * 1e3:.3f}", f"{tiles * 1e3:.3f}", f"{rows / tiles:.2f}x"]
                print(f"| {n}x{k} | {m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
