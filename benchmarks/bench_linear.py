"""Quantized Linear forward on CPU: mono_quant INT8 / INT4 against torch, side by side.

    python benchmarks/bench_linear.py            # full run, writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_linear.py --quick    # fewer repeats, same table

Llama-7B shapes (out x in) 4096x4096, 11008x4096, 4096x11008 at batch 1, 8 and 32, float32
activations. Contenders, each timed in the same process, interleaved call by call, as the
median of repeats; each contender cycles through distinct layers holding more than 100 MB of
weights, so no contender runs from cache:
  - torch fp32 ``F.linear``
  - torch ``quantize_dynamic`` (int8 dynamic nn.Linear, fbgemm)
  - torch ``_weight_int8pack_mm`` (int8 weight-only, per-channel scales)
  - torch ``_weight_int4pack_mm_for_cpu`` (int4 weight-only, group 128)
  - torch bf16 ``F.linear`` (bf16 weights and activations: oneDNN, AMX where the CPU has it)
  - torchao's CPU int4 (``PrototypeInt4WeightOnlyConfig``, group 128, bf16 activations), when
    torchao is installed (``pip install -e .[benchmark]``)
  - ONNX Runtime per-channel INT8 (``onnxruntime.quantization.quantize_dynamic``,
    ``per_channel=True``) of the same MatMul, when onnxruntime is installed
  - mono_quant ``linear_int8`` (per-channel) and ``linear_int4`` (group 128)
It also measures the machine's memory read bandwidth (median of large ``tensor.sum()``) and
reports the fraction of it that the batch-1 kernels reach (bytes of packed weights / time).
A benchmark, never a test: nothing here gates anything.

mono_quant's kernels run on torch's own OpenMP team when torch uses libgomp (the header
line names the thread pool in use), so interleaved calls do not pit two pools against each
other. ``MONO_QUANT_THREADPOOL=own`` times mono_quant's own pool instead, and
``OMP_WAIT_POLICY=PASSIVE`` changes how torch's threads wait; ``--append`` adds such a run
to the same file:

    python benchmarks/bench_linear.py && MONO_QUANT_THREADPOOL=own python benchmarks/bench_linear.py --append

Only this benchmark's section of the file (between its markers) is replaced.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_name, write_section  # noqa: E402
from mono_quant import _kernels as K  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
BATCHES = [1, 8, 32]
GROUP = 128
ROTATION_BYTES = 100e6  # each contender cycles through more than this many weight bytes


class Contender:
    """One implementation: a list of distinct layers and a call that runs layer i."""

    def __init__(self, name: str, layers: list, nbytes: int, call: Callable[[object, torch.Tensor], torch.Tensor]):
        self.name, self.layers, self.nbytes, self.call = name, layers, nbytes, call
        self.times: list[float] = []
        self.i = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[self.i % len(self.layers)]
        self.i += 1
        return self.call(layer, x)


def optional_peers(w: torch.Tensor, n: int, k: int) -> list[Contender]:
    """torchao's CPU int4 and ONNX Runtime's per-channel INT8, when they are installed (the
    ``benchmark`` extra); each returns float32 like the others (casts are timed too)."""
    out: list[Contender] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
            from torchao.quantization import quantize_
    except Exception as exc:  # noqa: BLE001 - any failure to import means "not available"
        print(f"  torchao not available ({type(exc).__name__}): its row is left out", file=sys.stderr)
    else:
        layers = []
        for _ in range(copies(n * k // 2)):
            lin = nn.Sequential(nn.Linear(k, n, bias=False)).to(torch.bfloat16)
            with torch.no_grad():
                lin[0].weight.copy_(w)
            quantize_(lin, PrototypeInt4WeightOnlyConfig(group_size=GROUP))
            layers.append(lin)
        out.append(Contender(f"torchao int4 g{GROUP} (bf16)", layers, n * k // 2 + n * (k // GROUP) * 4,
                             lambda m, x: m(x.to(torch.bfloat16)).float()))
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" advice
    except Exception as exc:  # noqa: BLE001
        print(f"  onnxruntime not available ({type(exc).__name__}): its row is left out", file=sys.stderr)
    else:
        import tempfile

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "wt"], ["y"])], "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
            [numpy_helper.from_array(w.t().contiguous().numpy(), "wt")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # ORT's threads spin after each run by default: interleaved with the others they would
        # hold the cores that torch's (and mono_quant's) threads need next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = []
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
            onnx.save(model, src)
            quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
            for _ in range(copies(n * k)):
                sessions.append(ort.InferenceSession(dst, opts, providers=["CPUExecutionProvider"]))
        out.append(Contender("onnxruntime int8 per-channel", sessions, n * k,
                             lambda s_, x: torch.from_numpy(s_.run(None, {"x": x.numpy()})[0])))
    return out


def copies(nbytes: int) -> int:
    """Distinct layers needed so that one contender streams more than ROTATION_BYTES."""
    return max(2, math.floor(ROTATION_BYTES / nbytes) + 1)


def build(n: int, k: int, gen: torch.Generator) -> list[Contender]:
    w = torch.randn(n, k, generator=gen) * 0.02
    out: list[Contender] = []

    f32 = [w] + [torch.randn(n, k, generator=gen) * 0.02 for _ in range(copies(4 * n * k) - 1)]
    out.append(Contender("torch fp32 F.linear", f32, 4 * n * k, lambda W, x: F.linear(x, W)))

    lin = nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in 2.13
        qdyn = [torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
                for _ in range(copies(n * k))]
    out.append(Contender("torch quantize_dynamic int8", qdyn, n * k, lambda m, x: m(x)))

    s8 = w.abs().amax(dim=1) / 127
    q8 = torch.round(w / s8[:, None]).clamp(-127, 127).to(torch.int8)
    i8 = [(q8.clone(), s8.clone()) for _ in range(copies(n * k))]
    out.append(Contender("torch _weight_int8pack_mm", i8, n * k,
                         lambda p, x: torch._weight_int8pack_mm(x, p[0], p[1])))

    wg = w.view(n, k // GROUP, GROUP)
    lo, hi = wg.amin(-1), wg.amax(-1)
    s4 = ((hi - lo) / 15).clamp_min(1e-8)
    q4 = torch.round((wg - lo[..., None]) / s4[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
    # torch's int4 weight is (q - 8) * scale + zero
    sz = torch.stack([s4, lo + 8 * s4], dim=-1).transpose(0, 1).contiguous()
    t4 = [(torch._convert_weight_to_int4pack_for_cpu(q4, 2), sz.clone()) for _ in range(copies(n * k // 2))]
    out.append(Contender(f"torch _weight_int4pack_mm g{GROUP}", t4, t4[0][0].numel() + sz.numel() * 4,
                         lambda p, x: torch._weight_int4pack_mm_for_cpu(x, p[0], GROUP, p[1])))

    bf = [w.to(torch.bfloat16)] + [torch.randn(n, k, generator=gen).mul_(0.02).to(torch.bfloat16)
                                   for _ in range(copies(2 * n * k) - 1)]
    out.append(Contender("torch bf16 F.linear", bf, 2 * n * k,
                         lambda W, x: F.linear(x.to(torch.bfloat16), W).float()))
    out += optional_peers(w, n, k)

    zp8 = torch.zeros(n, dtype=torch.int32)
    p8 = K.pack_linear_int8(q8, s8, zp8)
    ours8 = [p8] + [p8.clone() for _ in range(copies(p8.numel()) - 1)]
    out.append(Contender("mono_quant linear_int8", ours8, p8.numel(),
                         lambda p, x: K.linear_int8(x, p, n, k)))

    # our INT4 format: value = (q - zero_point) * scale, integer zero point in 0..15
    lo0, hi0 = lo.clamp_max(0), hi.clamp_min(0)
    s4m = ((hi0 - lo0) / 15).clamp_min(1e-8).half()
    zp4 = torch.round(-lo0 / s4m.float()).clamp(0, 15)
    nib = (torch.round(wg / s4m.float()[..., None]) + zp4[..., None]).clamp(0, 15).to(torch.uint8).view(n, k)
    canon = (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous()
    zp4 = zp4.to(torch.uint8)
    s4 = s4m
    p4 = K.pack_linear_int4(canon, s4, zp4, GROUP)
    ours4 = [p4] + [p4.clone() for _ in range(copies(p4.numel()) - 1)]
    out.append(Contender(f"mono_quant linear_int4 g{GROUP}", ours4, p4.numel(),
                         lambda p, x: K.linear_int4(x, p, n, k, GROUP)))
    return out


_BANDWIDTH_PROBE = """
import statistics, sys, time, torch
torch.set_num_threads({threads})
a = torch.ones(256 * 1024 * 1024)
a.sum()
times = []
for _ in range({repeats}):
    t = time.perf_counter()
    a.sum()
    times.append(time.perf_counter() - t)
print(a.numel() * 4 / statistics.median(times))
"""


def read_bandwidth(repeats: int, probes: int = 3) -> float:
    """Memory read bandwidth in bytes/s: median time of summing a 1 GiB float32 tensor, in
    `probes` fresh processes, the highest of them. One process alone is not enough here: how
    the OS places its threads can halve what it measures (seen: 48 vs 78 GB/s, same minute)."""
    code = _BANDWIDTH_PROBE.format(threads=torch.get_num_threads(), repeats=repeats)
    results = []
    for _ in range(probes):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results.append(float(out.stdout.strip()))
    return max(results)


CELL_BUDGET_S = 3.0  # a contender slower than this allows gets fewer repeats (at least 5)


def time_shape(contenders: list[Contender], x: torch.Tensor, repeats: int) -> None:
    wanted = {}
    for c in contenders:
        c.times = []
        t = time.perf_counter()
        for _ in range(3):
            c.run(x)
        per_call = (time.perf_counter() - t) / 3
        wanted[c.name] = max(5, min(repeats, int(CELL_BUDGET_S / per_call)))
    for r in range(repeats):
        for c in contenders:  # interleaved: every contender sees the same machine state
            if r >= wanted[c.name]:
                continue
            t = time.perf_counter()
            c.run(x)
            c.times.append(time.perf_counter() - t)


BACK_TO_BACK = ("torch fp32 F.linear", "torch quantize_dynamic int8", "mono_quant linear_int8",
                f"mono_quant linear_int4 g{GROUP}")


def probe_now(probe: torch.Tensor, repeats: int = 5) -> float:
    """Read bandwidth (bytes/s) right now, in this process: median time of ``probe.sum()``.
    This machine's bandwidth drifts by 1.5x within minutes (other tenants), so the
    back-to-back runs are also compared with a probe taken just before and after them."""
    probe.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        probe.sum()
        times.append(time.perf_counter() - t)
    return probe.numel() * probe.element_size() / statistics.median(times)


def time_back_to_back(contenders: list[Contender], x: torch.Tensor, repeats: int,
                      probe: torch.Tensor) -> tuple[dict, float]:
    """Each contender alone for `repeats` consecutive calls (layers still rotated): the
    steady state of a model running one quantized layer after another, thread pools awake.
    Also returns the higher of two in-process bandwidth probes taken before and after."""
    out = {}
    bw_before = probe_now(probe)
    for c in contenders:
        if c.name not in BACK_TO_BACK:
            continue
        time.sleep(0.2)  # let the previous contender's spinning threads go to sleep
        for _ in range(10):  # wake this contender's threads and let the OS place them
            c.run(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            c.run(x)
            times.append(time.perf_counter() - t)
        out[c.name] = (statistics.median(times), c.nbytes)
    return out, max(bw_before, probe_now(probe))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a rough look in ~1 minute)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"),
                    help="markdown file to write ('-' for none)")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = ap.parse_args()
    repeats = 9 if args.quick else 41
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()

    with torch.no_grad():
        bw = read_bandwidth(9 if args.quick else 21)
        probe = torch.ones(256 * 1024 * 1024)  # 1 GiB, for the probes next to the back-to-back runs
        rows, steady = [], []
        for n, k in SHAPES:
            contenders = build(n, k, gen)
            for m in BATCHES:
                x = torch.randn(m, k, generator=gen)
                # sanity: every contender computes the same layer (layer 0) within int4 error
                ref = F.linear(x, contenders[0].layers[0])
                for c in contenders:
                    c.i = 0
                    err = ((c.run(x) - ref).norm() / ref.norm()).item()
                    if err > 0.2:
                        raise SystemExit(f"{c.name} is wrong on {n}x{k} batch {m}: relative error {err:.3f}")
                time_shape(contenders, x, repeats)
                rows.append((n, k, m, {c.name: (statistics.median(c.times), c.nbytes) for c in contenders}))
                if m == 1:
                    steady.append((n, k, *time_back_to_back(contenders, x, repeats, probe)))
                print(f"  done {n}x{k} batch {m}", file=sys.stderr)
            del contenders
        bw_after = read_bandwidth(9 if args.quick else 21)
    load_after = os.getloadavg()
    text = report(rows, steady, (bw, bw_after), threads, repeats, args, load_before, load_after)
    print(text)
    if args.out != "-":
        if args.append:
            with open(args.out, "a") as f:
                f.write("\n" + text)
        else:
            write_section(args.out, "bench_linear", text, first=True)





def report(rows, steady, bws, threads, repeats, args, load_before, load_after) -> str:
    # The highest bandwidth any probe saw during the run (fresh processes before and after,
    # in-process probes next to the back-to-back runs): the harder bar for our kernels, since
    # this machine's bandwidth drifts between ~45 and ~80 GB/s from minute to minute.
    bw = max([*bws, *(bw_near for *_, bw_near in steady)])
    names = list(rows[0][3])
    fp32, qdyn = names[0], names[1]
    ours8, ours4 = names[-2], names[-1]
    omp = os.environ.get("OMP_WAIT_POLICY")
    pool = os.environ.get("MONO_QUANT_THREADPOOL")
    cmd = (f"OMP_WAIT_POLICY={omp} " if omp else "") + (f"MONO_QUANT_THREADPOOL={pool} " if pool else "") + "python benchmarks/bench_linear.py" + (
        " --quick" if args.quick else "") + (" --append" if args.append else "")
    cpu = cpu_name()
    out = [
        "# Quantized Linear forward: mono_quant vs torch (CPU)" + (f", OMP_WAIT_POLICY={omp}" if omp else "")
        + (f", MONO_QUANT_THREADPOOL={pool}" if pool else ""),
        "",
        f"Command: `{cmd}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {cpu}; {threads} threads; "
        f"torch {torch.__version__}; mono_quant path `{K.linear_path_text()}`, threads "
        f"`{K.cpu_features()['threads']}`  ",
        f"Median of {repeats} interleaved calls per cell (fewer, at least 5, for contenders "
        f"slower than {CELL_BUDGET_S:.0f} s per cell), float32 activations, each contender "
        f"rotating through > {ROTATION_BYTES / 1e6:.0f} MB of distinct layers. "
        f"Load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(anything near the core count means the timings are noisy). "
        f"OpenMP wait policy (torch's thread pool): {omp or 'libgomp default (threads spin after a parallel region)'}.",
        "",
        f"Memory read bandwidth (median `tensor.sum()` of 1 GiB, {threads} threads, best of 3 fresh "
        "processes): "
        f"{bws[0] / 1e9:.1f} GB/s before and {bws[1] / 1e9:.1f} after the runs; in-process probes next "
        "to the back-to-back runs: " + ", ".join(f"{b / 1e9:.1f}" for *_, b in steady) + " GB/s. "
        f"The fractions below use the highest of all: **{bw / 1e9:.1f} GB/s**.",
        "",
        "## Time per call (ms)",
        "",
        "| out x in | batch | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for n, k, m, res in rows:
        out.append(f"| {n}x{k} | {m} | " + " | ".join(f"{res[c][0] * 1e3:.3f}" for c in names) + " |")
    out += [
        "",
        "## Speed-ups (higher is better)",
        "",
        "| out x in | batch | int8 vs fp32 | int4 vs fp32 | int8 vs quantize_dynamic | "
        "int8 vs _weight_int8pack_mm | int4 vs _weight_int4pack_mm | fastest peer | int8 vs it | int4 vs it |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    peers = [c for c in names if c not in (fp32, ours8, ours4)]
    for n, k, m, res in rows:
        t = {c: res[c][0] for c in names}
        best = min(peers, key=lambda c: t[c])
        out.append(
            f"| {n}x{k} | {m} | {t[fp32] / t[ours8]:.2f}x | {t[fp32] / t[ours4]:.2f}x | "
            f"{t[qdyn] / t[ours8]:.2f}x | {t[names[2]] / t[ours8]:.2f}x | {t[names[3]] / t[ours4]:.2f}x | "
            f"{best} | {t[best] / t[ours8]:.2f}x | {t[best] / t[ours4]:.2f}x |"
        )
    out += [
        "",
        "## Batch 1: bandwidth reached (bytes of weights read / time)",
        "",
        "Bytes are the packed tensors' sizes (weights plus their scales and zero points).",
        "",
        "| out x in | contender | MB read | GB/s | fraction of measured bandwidth |",
        "|---|---|---:|---:|---:|",
    ]
    for n, k, m, res in rows:
        if m != 1:
            continue
        for c in (fp32, ours8, ours4):
            secs, nbytes = res[c]
            out.append(f"| {n}x{k} | {c} | {nbytes / 1e6:.1f} | {nbytes / secs / 1e9:.1f} | "
                       f"{nbytes / secs / bw:.0%} |")
    out += [
        "",
        "## Batch 1, back to back: each contender alone, consecutive calls",
        "",
        "Not interleaved: every contender's thread pool stays awake between its calls (layers "
        "are still rotated, so weights come from memory). This isolates the kernels from the "
        "cost of waking threads and from the other pool's spinning threads. The last column "
        "compares with the bandwidth measured in this process just before and after these runs "
        "(the higher of the two), since the machine's bandwidth drifts during a run.",
        "",
        "| out x in | contender | ms | GB/s | fraction of measured bandwidth | vs fp32 | "
        "probe next to it (GB/s) | fraction of that probe |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, k, res, bw_near in steady:
        for c, (secs, nbytes) in res.items():
            out.append(f"| {n}x{k} | {c} | {secs * 1e3:.3f} | {nbytes / secs / 1e9:.1f} | "
                       f"{nbytes / secs / bw:.0%} | {res[fp32][0] / secs:.2f}x | {bw_near / 1e9:.1f} | "
                       f"{nbytes / secs / bw_near:.0%} |")
    out += ["", targets(rows, steady, bw, names), ""]
    return "\n".join(out)


def targets(rows, steady, bw, names) -> str:
    fp32, qdyn, ours8, ours4 = names[0], names[1], names[-2], names[-1]
    lines = ["## Targets", ""]

    def worst(pred_rows, f):
        return min(f(res) for n, k, m, res in rows if pred_rows(m))

    b1 = lambda m: m == 1  # noqa: E731
    t = lambda res, c: res[c][0]  # noqa: E731
    checks = [
        ("INT4 g128 batch 1 >= 6x fp32", worst(b1, lambda r: t(r, fp32) / t(r, ours4)), 6.0, "x"),
        ("INT4 g128 batch 1 >= 80% of read bandwidth",
         worst(b1, lambda r: r[ours4][1] / t(r, ours4) / bw), 0.8, "%"),
        ("(same, back to back, against the probe taken next to those runs)",
         min(res[ours4][1] / res[ours4][0] / bw_near for n, k, res, bw_near in steady), 0.8, "%"),
        ("INT8 batch 1 >= 3x fp32", worst(b1, lambda r: t(r, fp32) / t(r, ours8)), 3.0, "x"),
        ("INT8 batch 1 >= 1.5x quantize_dynamic", worst(b1, lambda r: t(r, qdyn) / t(r, ours8)), 1.5, "x"),
        ("INT8 batch 8/32 not slower than fp32", worst(lambda m: m > 1, lambda r: t(r, fp32) / t(r, ours8)), 1.0, "x"),
        ("INT4 batch 8/32 not slower than fp32", worst(lambda m: m > 1, lambda r: t(r, fp32) / t(r, ours4)), 1.0, "x"),
    ]
    lines += ["| target | worst case over shapes | met |", "|---|---:|---|"]
    peers = [c for c in names if c in (qdyn, "torch bf16 F.linear") or c.startswith("torchao")]
    big32 = lambda m: m == 32  # noqa: E731
    for ours in (ours8, ours4):
        checks.append((f"{ours} batch 32 >= 2x the fastest of "
                       + ", ".join(peers) + " (4096x4096, 11008x4096)",
                       min(min(t(res, p) for p in peers) / t(res, ours) for n, k, m, res in rows
                           if big32(m) and (n, k) in ((4096, 4096), (11008, 4096))), 2.0, "x"))
    for label, value, goal, unit in checks:
        shown = f"{value:.0%}" if unit == "%" else f"{value:.2f}x"
        lines.append(f"| {label} | {shown} | {'yes' if value >= goal else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
