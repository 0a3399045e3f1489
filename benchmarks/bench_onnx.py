"""Accuracy retention and speed of MiniLM-L6 exported to ONNX: fp32 vs mono_quant eager vs
ONNX Runtime, for INT8 (dynamic), static INT8 and INT4, like a PTQ evaluation report.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/bench_onnx.py
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/bench_onnx.py --append benchmarks/RESULTS.md

On a shared, busy machine use OMP_WAIT_POLICY=PASSIVE: torch's spinning OpenMP threads then
wait for a descheduled peer at every barrier and MiniLM's batch 1 gets 10-50x slower, which
says nothing about either runtime (ONNX Runtime's threads are set not to spin either).

Beside eager torch, each torch model also runs compiled (``torch.compile``, inductor), as
loaded and switched to transformers' "eager" attention: the graph-level peers of ONNX Runtime.
Each quantized model is exported once with ``mono_quant.export_onnx`` (INT8 also with
``int8_activations="dynamic"``) and run in ONNX Runtime on the CPU. Accuracy: cosine of the
mean-pooled, normalised sentence embeddings against fp32 torch, over the demo's twelve
sentences and twelve more varied ones (mean and worst sentence). Size: the ``.onnx`` file, or
for eager rows the ``save_quantized`` ``.safetensors`` file. Latency: batch 1 is one sentence,
batch 12 the demo's twelve padded together; every contender runs in this process with the
same thread count, rounds interleaved, each cell the median over rounds of per-round medians.
A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_name, median_seconds  # noqa: E402
import mono_quant  # noqa: E402
from mono_quant import _kernels as K  # noqa: E402
from mono_quant.demo import SENTENCES, load_minilm  # noqa: E402
from mono_quant.demo_static import calibration_batches  # noqa: E402

VARIED = (
    "Hi!",
    "What time does the pharmacy on Elm Street close on Sundays?",
    "The quarterly report shows revenue of 4.2 million euros, up 13% year on year.",
    "def add(a, b): return a + b",
    "Ich habe heute keine Zeit, aber morgen gerne.",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
    "lol that was the worst movie ever, never watching it again",
    "Please reset my password; the link in the email has expired twice already.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong became the first person to walk on it.",
    "Stir the sauce gently for ten minutes, then season with salt, pepper and a pinch of nutmeg.",
    "The defendant's counsel argued that the evidence had been obtained without a valid warrant.",
    "Rain again. Grey skies, cold coffee, and a long queue at the bus stop.",
)



def build(model, tokenizer) -> dict[str, torch.nn.Module]:
    """The eager models: fp32 and each mono_quant scheme."""
    return {
        "fp32": model,
        "int8": mono_quant.dynamic_quantize(model, "int8", validate=False)[0],
        "static int8 (mse)": mono_quant.static_quantize(
            model, calibration_batches(tokenizer), observer="mse", num_samples=40, progress=False)[0],
        "int4 g128": mono_quant.dynamic_quantize(model, "int4", validate=False)[0],
    }


def export_all(models: dict, tokenizer, folder: str) -> dict[str, tuple[str, str]]:
    """ONNX files: row name -> (eager model key, path)."""
    sample = dict(tokenizer(list(SENTENCES[:2]), padding=True, return_tensors="pt"))
    plan = {
        "ORT fp32": ("fp32", {}),
        "ORT int8 (weight-only QDQ, default)": ("int8", {}),
        "ORT int8 (int8_activations='dynamic')": ("int8", {"int8_activations": "dynamic"}),
        "ORT static int8 (QDQ)": ("static int8 (mse)", {}),
        "ORT int4 g128 (MatMulNBits)": ("int4 g128", {}),
    }
    out = {}
    for i, (row, (key, options)) in enumerate(plan.items()):
        path = os.path.join(folder, f"m{i}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings from transformers' shape checks
            mono_quant.export_onnx(models[key], sample, path, **options)
        out[row] = (key, path)
    # ONNX Runtime's own INT8: its quantize_dynamic (per-channel int8 weights, uint8 dynamic
    # activations) applied to the fp32 export, as an ORT user would quantize the model.
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
    ort_int8 = os.path.join(folder, "ort_int8_per_channel.onnx")
    quantize_dynamic(out["ORT fp32"][1], ort_int8, per_channel=True, weight_type=QuantType.QInt8)
    out[ORT_OWN_INT8] = ("fp32", ort_int8)
    return out


ORT_OWN_INT8 = "ORT int8 per-channel (onnxruntime.quantization.quantize_dynamic of the fp32 export)"
COMPILED_PREFIX = "compiled "
EAGER_ATTENTION = "eager"  # transformers' attention written as matmul + softmax, which inductor fuses


def compiled_row(key: str, attention: str = "") -> str:
    return COMPILED_PREFIX + key + (f", {attention} attention" if attention else "")


def compiled(models: dict) -> dict[str, tuple[str, torch.nn.Module | None]]:
    """torch.compile (inductor) of fp32, dynamic INT8 and static INT8: the graph-level peer of
    ONNX Runtime (inductor fuses torch's float ops around mono_quant's operators, which stay
    opaque C calls). Each twice: as loaded (transformers' SDPA attention), and a deep copy switched
    to transformers' "eager" attention (the same math as matmul + softmax + matmul), because
    torch's CPU SDPA kernel is slow at MiniLM's tiny heads ([12, 12, 15, 32]: ~0.5 ms a call).
    Row -> (eager model key, compiled module; None when ``models`` is empty: names only)."""
    # six compiled copies of one model class share its forward's code object, whose default
    # limit of 8 compiled variants would send the later ones back to eager execution
    torch._dynamo.config.recompile_limit = 64
    out = {}
    for key in ("fp32", "int8", "static int8 (mse)"):
        for attention in ("", EAGER_ATTENTION):
            module = None
            if models:
                module = models[key]
                if attention:
                    module = copy.deepcopy(module)
                    module.set_attn_implementation(attention)
                module = torch.compile(module)
            out[compiled_row(key, attention)] = (key, module)
    return out


def sessions(files: dict, threads: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's threads spin after a run by default: interleaved with torch they would take its cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return {row: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            for row, (_, path) in files.items()}


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(torch.float64)
    return torch.nn.functional.normalize((hidden.double() * m).sum(1) / m.sum(1), dim=-1)


@torch.no_grad()
def embeddings(runner, tokenizer) -> torch.Tensor:
    """Sentence embeddings of SENTENCES and VARIED (each group padded on its own)."""
    out = []
    for group in (SENTENCES, VARIED):
        batch = dict(tokenizer(list(group), padding=True, return_tensors="pt"))
        out.append(pooled(runner(batch), batch["attention_mask"]))
    return torch.cat(out)


def torch_runner(model):
    return lambda batch: model(**batch).last_hidden_state


def ort_runner(session):
    names = [i.name for i in session.get_inputs()]
    return lambda batch: torch.from_numpy(session.run(["last_hidden_state"],
                                                      {n: batch[n].numpy() for n in names})[0])



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20, help="calls per contender per round (batch 1; a third at batch 12)")
    ap.add_argument("--append", metavar="FILE", help="append the markdown table to FILE")
    args = ap.parse_args()

    import onnxruntime as ort

    threads = torch.get_num_threads()
    model, tokenizer = load_minilm()
    models = build(model, tokenizer)
    folder = tempfile.mkdtemp(prefix="bench_onnx_")
    files = export_all(models, tokenizer, folder)
    sizes = {row: os.path.getsize(path) for row, (_, path) in files.items()}
    for key, m in models.items():
        path = os.path.join(folder, f"{key.split()[0]}.safetensors")
        if key == "fp32":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)
        else:
            mono_quant.save_quantized(m, path)
        sizes[key] = os.path.getsize(path)
    sess = sessions(files, threads)
    runners = {**{key: torch_runner(m) for key, m in models.items()},
               **{row: ort_runner(s) for row, s in sess.items()}}
    for row, (key, module) in compiled(models).items():
        runners[row] = torch_runner(module)
        sizes[row] = sizes[key]
    order = ["fp32", "ORT fp32", compiled_row("fp32"), compiled_row("fp32", EAGER_ATTENTION),
             "int8", compiled_row("int8"), compiled_row("int8", EAGER_ATTENTION),
             "ORT int8 (weight-only QDQ, default)", "ORT int8 (int8_activations='dynamic')", ORT_OWN_INT8,
             "static int8 (mse)", compiled_row("static int8 (mse)"), compiled_row("static int8 (mse)", EAGER_ATTENTION),
             "ORT static int8 (QDQ)", "int4 g128", "ORT int4 g128 (MatMulNBits)"]
    source = {row: key for row, (key, _) in files.items()}
    source.update({row: key for row, (key, _) in compiled({}).items()})

    reference = embeddings(runners["fp32"], tokenizer)
    cos = {}
    for row in order:
        e = embeddings(runners[row], tokenizer)
        c = (e * reference).sum(-1)
        eager = embeddings(runners[source[row]], tokenizer) if row in source else e
        cos[row] = (float(c.mean()), float(c.min()), float((e * eager).sum(-1).min()))

    batches = {1: dict(tokenizer([SENTENCES[1]], return_tensors="pt")),
               12: dict(tokenizer(list(SENTENCES), padding=True, return_tensors="pt"))}
    load_before = os.getloadavg()[0]
    cells: dict[tuple[str, int], list[float]] = {}
    with torch.no_grad():
        for size, batch in batches.items():
            calls = args.calls if size == 1 else max(3, args.calls // 3)
            for row in order:  # warm up
                1000.0 * median_seconds(lambda: runners[row](batch), 3)
            for _ in range(args.rounds):
                for row in order:
                    cells.setdefault((row, size), []).append(1000.0 * median_seconds(lambda: runners[row](batch), calls))
    load_after = os.getloadavg()[0]
    ms = {key: statistics.median(v) for key, v in cells.items()}
    tokens = {size: int(b["input_ids"].shape[1]) for size, b in batches.items()}

    omp = os.environ.get("OMP_WAIT_POLICY")
    command = (f"OMP_WAIT_POLICY={omp} " if omp else "") + "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python " \
        "benchmarks/bench_onnx.py" + (f" --append {args.append}" if args.append else "")
    lines = [
        "# ONNX export: accuracy retention and latency, MiniLM-L6 (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {cpu_name()}; {threads} threads "
        f"(torch and ONNX Runtime); torch {torch.__version__}; onnxruntime {ort.__version__}; "
        f"mono_quant path `{K.linear_isa()}`  ",
        f"Cosine: mean-pooled sentence embeddings vs fp32 torch over {len(SENTENCES) + len(VARIED)} sentences "
        "(the demo's 12 and 12 varied ones), mean and worst sentence; for ORT and compiled rows also the worst "
        "cosine against the same model in eager torch. torch.compile rows: the eager model compiled with "
        "inductor's defaults, as loaded (SDPA attention) and with transformers' `eager` attention "
        "(`model.set_attn_implementation(\"eager\")`: matmul + softmax + matmul, which inductor fuses; "
        "torch's CPU SDPA kernel takes ~0.5 ms per call on MiniLM's tiny heads). Size: the .onnx file, or `save_quantized`'s .safetensors. "
        f"Latency: median over {args.rounds} interleaved rounds of the median of {args.calls} calls "
        f"(batch 1 = one sentence, {tokens[1]} tokens) or {max(3, args.calls // 3)} calls (batch 12, padded "
        f"to {tokens[12]} tokens). Load average before/after: {load_before:.2f} / {load_after:.2f} "
        "(anything near the core count means the timings are noisy: the machine is shared). OpenMP wait "
        f"policy (torch and mono_quant): {omp or 'libgomp default (spinning)'}; ONNX Runtime's threads do not "
        "spin.",
        "",
        "| model | runtime | cosine vs fp32 (mean / worst) | worst vs eager | size (MB) | batch 1 (ms) | vs fp32 | "
        "batch 12 (ms) | vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in order:
        if row.startswith("ORT"):
            runtime, name = "ONNX Runtime", row.removeprefix("ORT ")
        else:
            runtime = "torch.compile (inductor)" if row.startswith(COMPILED_PREFIX) else "torch eager"
            key = row.removeprefix(COMPILED_PREFIX)
            name = key if key.startswith("fp32") else f"mono_quant {key}"
        mean, worst, vs_eager = cos[row]
        eager = f"{vs_eager:.5f}" if row in source and (source[row] != "fp32" or row.startswith(COMPILED_PREFIX)) \
            else "-"
        t1, t12 = ms[(row, 1)], ms[(row, 12)]
        lines.append(
            f"| {name} | {runtime} | {mean:.4f} / {worst:.4f} | {eager} | {sizes[row] / 1e6:.1f} | {t1:.2f} | "
            f"{ms[('fp32', 1)] / t1:.2f}x | {t12:.2f} | {ms[('fp32', 12)] / t12:.2f}x |")
    t = {row: (ms[(row, 1)], ms[(row, 12)]) for row in order}
    lines += ["", "| target (issue 15) | measured | met |", "|---|---|---|"]
    for size, i in ((12, 1), (1, 0)):
        label = "" if size == 12 else " (for reference: the issue sets this at batch 12)"
        for row, how in (("int8", "eager"), (compiled_row("int8"), "torch.compile"),
                         (compiled_row("int8", EAGER_ATTENTION), "torch.compile, eager attention")):
            ratio = t[ORT_OWN_INT8][i] / t[row][i]
            lines.append(f"| batch {size}: mono_quant dynamic INT8 ({how}) faster than ONNX Runtime's per-channel "
                         f"INT8{label} | {t[row][i]:.2f} vs {t[ORT_OWN_INT8][i]:.2f} ms ({ratio:.2f}x) | "
                         f"{'yes' if ratio > 1 else 'NO'} |")
    for size, i in ((1, 0), (12, 1)):
        ratio = t["int8"][i] / t["static int8 (mse)"][i]
        lines.append(f"| batch {size}: mono_quant static INT8 >= dynamic INT8 | {t['static int8 (mse)'][i]:.2f} vs "
                     f"{t['int8'][i]:.2f} ms ({ratio:.2f}x) | {'yes' if ratio >= 1 else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
