"""INT4 scale search: SQNR and C time of scale_method="absmax" vs "mse", side by side.

    PYTHONPATH=. python benchmarks/int4_scale_search.py [--size 4096] [--repeats 5]

Weights: torch.manual_seed(0); torch.randn(size, size), float32. Times are medians of
``--repeats`` calls of ``_kernels.int4_quantize`` on the C backend.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mono_quant import _kernels as K


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm the thread pool and the caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[128])
    args = parser.parse_args()
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    saved = torch.get_num_threads()
    print(f"{'g':>4} {'mode':>5} {'absmax dB':>10} {'mse dB':>8} {'gain':>6} "
          f"{'threads':>7} {'absmax ms':>10} {'mse ms':>8} {'ratio':>6}")
    try:
        with K.use_backend("c"):
            for g in args.group_sizes:
                for symmetric in (True, False):
                    db = {}
                    for method in K.INT4_SCALE_METHODS:
                        q = K.int4_quantize(w, g, symmetric, method)
                        db[method] = K.sqnr(w, K.int4_dequantize(*q, group_size=g))
                    for threads in (1, 2):
                        torch.set_num_threads(threads)
                        ms = {m: 1e3 * _median_seconds(lambda m=m: K.int4_quantize(w, g, symmetric, m),
                                                       args.repeats)
                              for m in K.INT4_SCALE_METHODS}
                        print(f"{g:>4} {'sym' if symmetric else 'asym':>5} {db['absmax']:>10.3f} "
                              f"{db['mse']:>8.3f} {db['mse'] - db['absmax']:>6.3f} {threads:>7} "
                              f"{ms['absmax']:>10.1f} {ms['mse']:>8.1f} {ms['mse'] / ms['absmax']:>6.2f}")
    finally:
        torch.set_num_threads(saved)


if __name__ == "__main__":
    main()
