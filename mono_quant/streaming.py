"""``quantize_checkpoint``: quantize a checkpoint file layer by layer, without the model.

The source is read one layer (weight + bias, ...) at a time and each result is written out
before the next layer is read, so peak memory stays near the largest layer, not the model.
Layers go through the state_dict-mode scheme code (``Scheme.convert_state``) with the same
selection rules, so the output equals ``dynamic_quantize(state_dict)`` tensor for tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from . import _safetensors as st
from ._file_metadata import FileMetadata, LayerEntry, global_values
from ._files import check_regular, open_regular, remove_stale_partials
from ._json import loads_untrusted
from ._layer_schemes import LayerSchemes, add_pattern_warnings
from ._layers import skipped_layer, state_kind
from ._safetensors import tensor_crc32
from .config import QuantizationConfig
from .errors import CorruptFileError
from .info import QuantizationInfo
from .io import check_folder, check_state_layer, file_kind, load_pt_untrusted, run_dtype, state_layer_entry
from .selection import state_skip_reason, tied_weights
from .state_dict import join_key, split_key

INDEX_SUFFIX = ".safetensors.index.json"


def quantize_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dtype: str | torch.dtype | None = None,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    jobs: int = 1,
    **options: Any,
) -> QuantizationInfo:
    """Quantize the checkpoint ``src`` into ``dst`` and return the report.

    ``src`` is a ``.safetensors`` file, a sharded set's ``*.safetensors.index.json``, a folder
    holding either, or a ``.pt`` / ``.bin`` state_dict (loaded whole with
    ``torch.load(weights_only=True)``). ``dst`` is a ``.safetensors`` file written one tensor
    at a time (memory stays near the largest layer; disk briefly holds the output twice), a
    ``.pt`` file (all outputs are kept in memory until it is written), or a folder (a path
    without a file suffix): there each source shard becomes a shard of the same name plus
    ``model.safetensors.index.json``, and a transformers ``config.json`` next to the source is
    copied with a ``quantization_config``, with the folder's other files (tokenizer, ...), so
    that ``from_pretrained`` loads it (see ``mono_quant.sharded``). ``jobs`` quantizes that
    many shards at once, each in its own process with the memory of one layer.
    ``dtype``, ``config`` and ``options`` are those of ``dynamic_quantize``; the file is what
    ``save_quantized(*dynamic_quantize(state_dict, ...))`` would write for the same tensors.
    The end-of-run checks of ``dynamic_quantize`` do not run here (they would need the whole
    output in memory); ``mono_quant.validate.validate_file`` / ``mono-quant validate`` check
    the file afterwards.

    >>> info = quantize_checkpoint("model.safetensors", "model-int8.safetensors", "int8")
    >>> info = quantize_checkpoint("llama-7b/", "llama-7b-int4/", "int4", jobs=4)
    >>> print(info)
    """
    cfg = QuantizationConfig.from_sources(config, dtype=dtype, **options)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    info = QuantizationInfo(config=cfg)
    folder_output = is_folder_path(dst)
    if not folder_output:
        check_folder(dst)
        file_kind(dst)
    source = open_checkpoint(src)
    add_pattern_warnings(info, {split_key(name)[0] for name in source.names}, cfg)
    if folder_output:
        from .sharded import quantize_to_folder  # late: it imports this module

        return quantize_to_folder(source, src, dst, cfg, info, jobs)
    if jobs != 1:
        raise ValueError(f"jobs={jobs} splits the work by output shard; write to a folder (a path without a file "
                         "suffix) to use it, or pass jobs=1")
    if any(Path(dst).resolve() == Path(p).resolve() for p in source.files):
        raise ValueError(f"{os.fspath(dst)} is also the source; write the quantized checkpoint to another path")
    sink = _SafetensorsSink(dst) if file_kind(dst) == "safetensors" else _PtSink(dst)
    schemes = LayerSchemes(cfg)
    try:
        meta = quantize_layers(source, None, sink, schemes, info)
        schemes.finish(info)
        sink.finish(meta.to_strings())
    except BaseException:
        sink.abort()
        raise
    return info


def is_folder_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a folder output: an existing folder, or a path ending in a
    separator or without a file suffix ("out", "out/", "llama-int4")."""
    text = os.fspath(path)
    return os.path.isdir(text) or text.endswith((os.sep, "/")) or not Path(text).suffix


def quantize_layers(source: Checkpoint, only: set[str] | None, sink, schemes: LayerSchemes,
                    info: QuantizationInfo) -> FileMetadata:
    """Quantize the layers of ``source`` (those in ``only``, else all) one at a time into
    ``sink``; returns the metadata of what was written (records go to ``info``)."""
    layers, checksums = {}, {}
    tied = source.tied()
    with torch.no_grad():
        for prefix, tensors in source.layers(only):
            scheme = schemes.for_layer(prefix, tensors=tensors)
            reason = state_skip_reason(prefix, tensors, scheme, tied.get(prefix))
            if reason is None:
                out, record = scheme.convert_state(prefix, tensors)
            else:
                out, record = tensors, skipped_layer(prefix, state_kind(prefix, tensors), tensors, reason)
            info.add(record)
            entry = source.layer_entry(prefix, tensors, out, record)
            if entry is not None:
                layers[prefix] = entry
            for attr, tensor in out.items():
                tensor = tensor.detach().to("cpu").contiguous()
                checksums[join_key(prefix, attr)] = tensor_crc32(tensor)
                sink.write(join_key(prefix, attr), tensor)
            del tensors, out
    dtype_name, group_size = run_dtype(layers, {}, info)
    described = [entry.scheme for entry in layers.values()]
    return FileMetadata(global_values("state_dict", dtype_name, group_size, described, "state_dict"),
                        layers, {}, checksums)


class Checkpoint:
    """The tensors of a checkpoint, by layer, read lazily.

    ``names`` maps each tensor name to the file that holds it, in file order; ``layers()``
    yields ``(prefix, {key: tensor})`` one layer at a time.
    """

    def __init__(self, names: dict[str, str], whole: dict[str, torch.Tensor] | None = None,
                 sharded: bool = False) -> None:
        self.names = names
        self.files = sorted(set(names.values()))
        self.is_sharded = sharded  # read through a *.safetensors.index.json
        self._whole = whole

    def layers(self, only: set[str] | None = None) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """``(prefix, {key: tensor})`` for each layer (those in ``only``, else all), in file order."""
        for prefix, names in self.groups().items():
            if only is None or prefix in only:
                yield prefix, {split_key(n)[1]: t for n, t in self.read(names).items()}

    def tied(self) -> dict[str, str]:
        """Layers whose weight is another layer's (``selection.tied_weights``): possible in a
        .pt state_dict only (safetensors stores no shared tensors)."""
        return {} if self._whole is None else tied_weights(self._whole)

    def groups(self) -> dict[str, list[str]]:
        """Layer prefix -> its tensor names, in file order."""
        groups: dict[str, list[str]] = {}
        for name in self.names:
            groups.setdefault(split_key(name)[0], []).append(name)
        return groups

    def shapes(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Each tensor's dtype and shape, from the headers (a .pt checkpoint is in memory)."""
        if self._whole is not None:
            return {n: (t.dtype, tuple(t.shape)) for n, t in self._whole.items()}
        out = {}
        for path in self.files:
            out.update((n, (e.dtype, e.shape)) for n, e in _header(Path(path)).tensors.items() if n in self.names)
        return out

    def layer_entry(self, prefix: str, source: Mapping[str, torch.Tensor], out: Mapping[str, torch.Tensor],
                    record) -> LayerEntry | None:
        """The metadata record of layer ``prefix`` as written (``out``, made from ``source``).
        Its tensors must fit its format as ``load_quantized`` checks them (dtypes, shapes,
        values), so that the file written loads: a source whose layer cannot (an already
        quantized layer with bad values, a bias that does not match the weight) is a
        ``CorruptFileError`` naming the file that holds it."""
        path = self.names[join_key(prefix, next(iter(source)))]
        try:
            entry = state_layer_entry(prefix, out, record)
        except ValueError as exc:
            raise CorruptFileError(path, str(exc)) from None
        if entry is not None and entry.fmt is not None:
            check_state_layer(entry, out, path)
        return entry

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (each file is opened for this call only)."""
        if self._whole is not None:
            return {n: self._whole[n] for n in names}
        from safetensors import SafetensorError, safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.names[name], []).append(name)
        for path, file_names in by_file.items():
            # Opened per layer on purpose: safe_open maps the whole file, and pages it has
            # touched count towards the process's memory until the file is closed.
            try:
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in file_names:
                        out[name] = handle.get_tensor(name)
            except SafetensorError as exc:  # our header check passed: the file changed, or the library is stricter
                raise CorruptFileError(path, f"the safetensors library cannot read it ({' '.join(str(exc).split())[:200]})") from None
        return out


def open_checkpoint(src: str | os.PathLike[str]) -> Checkpoint:
    """A ``Checkpoint`` for a ``.safetensors`` file, an index, a folder, or a ``.pt`` / ``.bin``
    file; headers are checked (``CorruptFileError``) before anything is read."""
    path = Path(src)
    if path.is_dir():
        path = _pick_in_folder(path)
    elif not os.path.lexists(path):
        raise FileNotFoundError(f"{os.fspath(src)}: no such file or folder; check the path")
    check_regular(path, "checkpoint file")
    name = path.name.lower()
    if name.endswith(".json"):
        _require_reader()
        return Checkpoint(_index_names(path), sharded=True)
    if name.endswith(".safetensors"):
        _require_reader()
        return Checkpoint({n: str(path) for n in _header(path).tensors})
    if name.endswith((".pt", ".pth", ".bin")):
        whole = _load_whole(path)
        return Checkpoint({n: str(path) for n in whole}, whole)
    raise ValueError(f"{path}: unknown checkpoint type; pass a .safetensors file, a *{INDEX_SUFFIX}, a folder "
                     "holding one, or a .pt / .bin state_dict")


def _pick_in_folder(folder: Path) -> Path:
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return indexes[0]
    files = sorted(folder.glob("*.safetensors"))
    if not indexes and len(files) == 1:
        return files[0]
    found = len(indexes) if indexes else len(files)
    raise ValueError(f"{folder}: expected one *{INDEX_SUFFIX} or one .safetensors file, found {found}; "
                     "pass the file itself")


def _index_names(index: Path) -> dict[str, str]:
    with open_regular(index, "checkpoint index") as handle:
        text = handle.read()
    try:
        data = loads_untrusted(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(index, f"the index is not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptFileError(index, "the index has no 'weight_map' object of tensor name -> shard file")
    shards: dict[str, set[str]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CorruptFileError(index, f"shard {shard!r} must be a file name in the index's folder")
        shard_path = index.parent / shard
        if not os.path.lexists(shard_path):
            raise CorruptFileError(index, f"shard {shard!r} does not exist next to the index")
        shards[shard] = set(_header(shard_path).tensors)
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise CorruptFileError(index, f"tensor {name!r} is mapped to {shard!r}, which does not hold it")
    listed = set(weight_map)
    for shard, names in shards.items():
        extra = sorted(names - listed)
        if extra:
            raise CorruptFileError(index, f"shard {shard!r} holds {extra[0]!r}, which the weight_map does not list")
    return {name: str(index.parent / shard) for name, shard in weight_map.items()}


def _header(path: Path) -> st.Header:
    with open_regular(path, "checkpoint file") as handle:
        return st.read_header(handle, path)


def _load_whole(path: Path) -> dict[str, torch.Tensor]:
    state = load_pt_untrusted(path, "a state_dict")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CorruptFileError(path, "the file is not a state_dict (a dict of names to tensors)")
    return dict(state)


def _require_reader() -> None:
    try:
        import safetensors  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading .safetensors checkpoints needs the safetensors package: pip install 'mono_quant[safetensors]'"
        ) from None


class _SafetensorsSink:
    def __init__(self, path) -> None:
        self._writer = st.StreamingWriter(path)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._writer.write(name, tensor)

    def finish(self, metadata: Mapping[str, str]) -> None:
        self._writer.finish(metadata)

    def abort(self) -> None:
        self._writer.abort()


class _PtSink:
    """A ``.pt`` file is one pickle: outputs stay in memory until ``finish``."""

    def __init__(self, path) -> None:
        self.path = os.fspath(path)
        self._tensors: dict[str, torch.Tensor] = {}
        remove_stale_partials(self.path)  # left by a killed run; never written through

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._tensors[name] = tensor

    def finish(self, metadata: Mapping[str, str]) -> None:
        partial = self.path + ".partial"
        torch.save({"tensors": self._tensors, "metadata": dict(metadata)}, partial)
        os.replace(partial, self.path)

    def abort(self) -> None:
        self._tensors.clear()
        if os.path.exists(self.path + ".partial"):
            os.remove(self.path + ".partial")
