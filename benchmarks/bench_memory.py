"""Memory a running quantized MiniLM-L6 holds: its tensors (exact bytes) and the process's
resident memory after a forward, against the size of the same model's ``save_quantized`` file.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --append benchmarks/RESULTS.md

Each scheme runs in a fresh process that loads the quantized file into a model built from the
MiniLM config (so no fp32 weights of the quantized layers are ever allocated), runs a batch-1
forward and reports: the bytes of every tensor the model holds (parameters and buffers, shared
storage counted once), the file's size, and RSS after the forward minus RSS of the same process
before the model was built (interpreter, torch and transformers already imported).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Give freed heap back to the OS so RSS shows what is held, not what was once used."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def held_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def child(path: str) -> None:
    import gc

    import torch
    from transformers import AutoConfig, AutoModel

    import mono_quant
    from mono_quant.demo import SENTENCES, load_minilm

    model, tokenizer = load_minilm()
    name = model.config._name_or_path
    del model
    gc.collect()
    trim()
    before = rss_bytes()
    skeleton = AutoModel.from_config(AutoConfig.from_pretrained(name))
    if path.endswith("fp32.safetensors"):
        from safetensors.torch import load_model

        load_model(skeleton, path)
        qmodel = skeleton
    else:
        qmodel = mono_quant.load_quantized(path, skeleton)
    gc.collect()
    trim()
    with torch.no_grad():
        qmodel(**tokenizer([SENTENCES[1]], return_tensors="pt"))
    gc.collect()
    trim()
    packed = [m for m in qmodel.modules() if hasattr(m, "packed_bytes")]
    linear_held = sum(m.packed_bytes() + (0 if m.bias is None else m.bias.nbytes) for m in packed)
    linear_file = sum(m.storage_bytes() for m in packed)
    print(json.dumps({"held": held_bytes(qmodel), "rss": rss_bytes() - before,
                      "linear": linear_held / linear_file if packed else None}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--append", metavar="FILE", help="append the markdown table to FILE")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    import torch

    import mono_quant
    from mono_quant.demo import load_minilm

    model, _ = load_minilm()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in ("fp32", "int8", "int4"):
            path = os.path.join(tmp, f"{scheme}.safetensors")
            qmodel = model if scheme == "fp32" else mono_quant.dynamic_quantize(model, scheme, validate=False)[0]
            if scheme == "fp32":
                _save_fp32(model, path)
            else:
                mono_quant.save_quantized(qmodel, path)
            out = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True,
                                 check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((scheme, os.path.getsize(path), measured["held"], measured["rss"], measured["linear"]))
    mib = 1 << 20
    lines = [
        "# Memory of a running model: MiniLM-L6 after a forward, CPU",
        "",
        "Command: `python benchmarks/bench_memory.py" + (f" --append {args.append}`" if args.append else "`") + "  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__}. Fresh process per row: the file loaded into a model built from the config, "
        "one batch-1 forward; RSS is after the forward minus before building the model (malloc_trim'd).",
        "",
        "| model | file (MiB) | tensors held (MiB) | held / file | quantized Linear layers: held / file | "
        "RSS growth (MiB) | RSS / file |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scheme, size, held, rss, linear in rows:
        ratio = "-" if linear is None else f"{linear:.3f}"
        lines.append(f"| {scheme} | {size / mib:.1f} | {held / mib:.1f} | {held / size:.3f} | {ratio} | "
                     f"{rss / mib:.1f} | {rss / size:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text)


def _save_fp32(model, path: str) -> None:
    from safetensors.torch import save_model

    save_model(model, path)


if __name__ == "__main__":
    main()
