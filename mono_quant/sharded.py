"""``quantize_checkpoint`` into a folder: one output shard per source shard, an index, and the
transformers files that make the folder load with ``from_pretrained``.

A layer belongs to the shard that holds its ``weight`` (its tensors may be spread over
shards; the others are read from where they are). Each output shard is a complete
state_dict-layout mono_quant file (metadata, checksums) of its layers, written one tensor at a
time under the source shard's name; ``model.safetensors.index.json`` maps every tensor to its
shard. With ``jobs > 1`` the shards are quantized in that many worker processes (fresh
interpreters: ``mono_quant._shard_worker``), each holding one layer at a time as the
single-file path does.
When the source folder has a transformers ``config.json``, the output gets a copy with a
``quantization_config`` (``mono_quant.integrations._hf_config``) and the folder's other
non-weight files (tokenizer, generation config, ...). Files are written under temporary
names and renamed at the end, the index last; a failure removes what this run wrote.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._files import open_regular, remove_stale_partials
from ._json import loads_untrusted
from ._layer_schemes import LayerSchemes
from .config import QuantizationConfig
from .errors import CorruptFileError
from .info import QuantizationInfo
from .state_dict import split_key
from .streaming import Checkpoint, _SafetensorsSink, quantize_layers

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Files of the source folder that are weights (never copied); everything else is.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")


def quantize_to_folder(source: Checkpoint, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                       config: QuantizationConfig, info: QuantizationInfo, jobs: int) -> QuantizationInfo:
    """Write ``source`` quantized into the folder ``dst`` (see the module docstring)."""
    folder = Path(dst)
    if not folder.parent.is_dir():
        raise FileNotFoundError(f"{os.fspath(dst)}: the folder {folder.parent.resolve()} does not exist; create it first")
    source_folder = _source_folder(src)
    if folder.exists() and source_folder is not None and folder.resolve() == source_folder.resolve():
        raise ValueError(f"{os.fspath(dst)} is the source folder; write the quantized checkpoint to another folder")
    hf_config = _read_hf_config(source_folder)
    plan = shard_plan(source)
    folder.mkdir(exist_ok=True)
    created: list[Path] = []
    try:
        results = _run(source, plan, folder, config, jobs)
        for records, _, _ in results:
            for record in records:
                info.add(record)
        LayerSchemes(config).finish(info)
        for shard in plan:
            os.replace(folder / _partial(shard), folder / shard)
            created.append(folder / shard)
        layers = {name: entry for _, shard_layers, _ in results for name, entry in shard_layers.items()}
        created += _write_side_files(folder, source_folder, hf_config, config, layers)
        if len(plan) > 1 or source.is_sharded:
            weight_map = {name: shard for shard, (_, _, names) in zip(plan, results) for name in names}
            index = {"metadata": {"total_size": _total_size(folder, plan), "format": "mono_quant"},
                     "weight_map": weight_map}
            created.append(_write_json(folder / INDEX_NAME, index))
    except BaseException:
        for path in created + [folder / _partial(shard) for shard in plan]:
            if path.exists():
                path.unlink()
        for shard in plan:  # the scratch files of a worker killed while writing (another one failed)
            remove_stale_partials(folder / _partial(shard))
        raise
    return info


def shard_plan(source: Checkpoint) -> dict[str, set[str]]:
    """Output shard name -> the layers it holds: each layer goes with its ``weight`` (else its
    first tensor), to a shard named like the source file holding it."""
    plan: dict[str, set[str]] = {}
    for prefix, names in source.groups().items():
        home = next((n for n in names if split_key(n)[1] == "weight"), names[0])
        shard = Path(source.names[home]).name if source.is_sharded else SINGLE_NAME
        plan.setdefault(shard, set()).add(prefix)
    return plan


def _run(source: Checkpoint, plan: Mapping[str, set[str]], folder: Path, config: QuantizationConfig,
         jobs: int) -> list[tuple]:
    tasks = [(source, layers, str(folder / _partial(shard)), config) for shard, layers in plan.items()]
    if jobs == 1 or len(tasks) == 1:
        return [_quantize_shard(*task) for task in tasks]
    _check_sendable(config, jobs)
    return _run_in_processes(tasks, min(jobs, len(tasks)), folder)


def _check_sendable(config: QuantizationConfig, jobs: int) -> None:
    fn = config.filter_fn
    local = fn is not None and (getattr(fn, "__module__", None) == "__main__" or "<" in getattr(fn, "__qualname__", ""))
    try:
        if local:
            raise pickle.PicklingError(f"filter_fn {getattr(fn, '__qualname__', fn)!r} is defined in __main__ or "
                                       "inside a function")
        pickle.dumps(config)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"jobs={jobs} sends the options to other processes, and they cannot be sent ({exc}); "
                         "define filter_fn at the top level of an importable module, or use jobs=1") from None


def _run_in_processes(tasks: list[tuple], workers: int, folder: Path) -> list[tuple]:
    """The tasks split over ``workers`` processes (``python -m mono_quant._shard_worker``), each
    taking a share of about equal size and running its tasks one after the other."""
    scratch = Path(tempfile.mkdtemp(prefix=".quantizing-", dir=folder))
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    threads = max(1, (os.cpu_count() or 1) // workers)
    shares = _balanced(tasks, workers)
    processes: list[subprocess.Popen] = []
    try:
        for w, share in enumerate(shares):
            (scratch / f"{w}.task").write_bytes(pickle.dumps([tasks[i] for i in share]))
            with open(scratch / f"{w}.stderr", "wb") as stderr:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "mono_quant._shard_worker", str(scratch / f"{w}.task"),
                     str(scratch / f"{w}.result"), str(threads)],
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr))
        results: list[tuple | None] = [None] * len(tasks)
        while any(p.poll() is None for p in processes):
            for w, process in enumerate(processes):  # fail fast: one failed share stops the others
                if process.poll() is not None and process.returncode != 0 or _failed(scratch, w):
                    _result(scratch, w, process.poll(), [tasks[i][2] for i in shares[w]])
            time.sleep(0.05)
        for w, process in enumerate(processes):
            for i, value in zip(shares[w], _result(scratch, w, process.returncode, [tasks[i][2] for i in shares[w]])):
                results[i] = value
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    return results  # type: ignore[return-value]


def _balanced(tasks: list[tuple], workers: int) -> list[list[int]]:
    """Task indexes split into ``workers`` shares of about equal bytes (largest first, each to
    the lightest share), each share in the original order."""
    source = tasks[0][0]
    shapes, groups = source.shapes(), source.groups()
    sizes = [sum(_nbytes(*shapes[name]) for prefix in layers for name in groups[prefix])
             for _, layers, _, _ in tasks]
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(range(len(tasks)), key=lambda i: -sizes[i]):
        lightest = loads.index(min(loads))
        shares[lightest].append(i)
        loads[lightest] += sizes[i]
    return [sorted(share) for share in shares if share]


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * dtype.itemsize


def _failed(scratch: Path, w: int) -> bool:
    return (scratch / f"{w}.result").exists() and (scratch / f"{w}.failed").exists()


def _result(scratch: Path, w: int, code: int | None, paths: list[str]) -> list[tuple]:
    result = scratch / f"{w}.result"
    shards = ", ".join(Path(p).name.removesuffix(".quantizing") for p in paths)
    if code not in (0, None) or not result.exists():
        tail = (scratch / f"{w}.stderr").read_bytes().decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the process quantizing {shards} exited with code {code}: {' | '.join(tail) or 'no message'}")
    status, value = pickle.loads(result.read_bytes())  # our own worker's output
    if status == "error":
        raise value
    return value


def _quantize_shard(source: Checkpoint, layers: set[str], path: str, config: QuantizationConfig) -> tuple:
    """Quantize ``layers`` of ``source`` into the file ``path``; returns (records, layer
    entries, tensor names written). Runs in a worker process when jobs > 1."""
    info = QuantizationInfo(config=config)
    sink = _SafetensorsSink(path)
    try:
        meta = quantize_layers(source, layers, sink, LayerSchemes(config), info)
        sink.finish(meta.to_strings())
    except BaseException:
        sink.abort()
        raise
    return list(info.layers.values()), meta.layers, list(meta.checksums)


def _partial(shard: str) -> str:
    return shard + ".quantizing"


def _total_size(folder: Path, plan: Mapping[str, set[str]]) -> int:
    from . import _safetensors as st

    total = 0
    for shard in plan:
        with open_regular(folder / shard) as handle:
            header = st.read_header(handle, folder / shard)
        total += sum(entry.nbytes for entry in header.tensors.values())
    return total


def _source_folder(src: str | os.PathLike[str]) -> Path | None:
    path = Path(src)
    folder = path if path.is_dir() else path.parent
    return folder if folder.is_dir() else None


def _read_hf_config(folder: Path | None) -> dict[str, Any] | None:
    """The source's transformers config.json, or None when there is none."""
    if folder is None or not (folder / CONFIG_NAME).is_file():
        return None
    path = folder / CONFIG_NAME
    with open_regular(path, "config file") as handle:
        text = handle.read()
    try:
        data = loads_untrusted(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not ({"model_type", "architectures"} & set(data)):
        return None  # some other config.json: not ours to rewrite
    if data.get("quantization_config"):
        raise ValueError(f"{path} already has a quantization_config ({data['quantization_config'].get('quant_method')!r}"
                         "); quantize the float checkpoint instead")
    return data


def _write_side_files(folder: Path, source_folder: Path | None, hf_config: dict | None,
                      config: QuantizationConfig, layers: Mapping) -> list[Path]:
    """config.json with the quantization_config, and copies of the other non-weight files."""
    if hf_config is None or source_folder is None:
        return []
    from .integrations._hf_config import config_dict

    out = []
    for path in sorted(source_folder.iterdir()):
        name = path.name
        if not path.is_file() or path.is_symlink() and not path.resolve().is_file():
            continue
        if name == CONFIG_NAME or name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".quantizing"):
            continue
        shutil.copyfile(path, folder / name)
        out.append(folder / name)
    written = {**hf_config, "quantization_config": config_dict(config, layers, "state_dict")}
    return out + [_write_json(folder / CONFIG_NAME, written)]


def _write_json(path: Path, data: dict) -> Path:
    partial = path.with_name(path.name + ".quantizing")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    return path
