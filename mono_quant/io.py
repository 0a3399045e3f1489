"""Saving and loading quantized models as ``.safetensors`` or ``.pt`` (chosen by the suffix).

Both formats hold the same thing: plain tensors in the canonical layout of docs/design.md
(``fc.qweight``, ``fc.scale``, ...) and string metadata (see ``_file_metadata`` for the keys).
A ``.safetensors`` file is readable with the safetensors library alone; a ``.pt`` file is a
dict ``{"tensors": {name: tensor}, "metadata": {name: str}}`` that ``torch.load(path,
weights_only=True)`` reads; no module object is ever pickled.

Loading trusts nothing in the file: the safetensors header, every tensor's dtype, shape and
CRC-32, and the metadata are checked against each other and against the model skeleton
before the skeleton is changed; any mismatch is a ``CorruptFileError`` (a ValueError) that
names the file and the problem.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import _safetensors as st
from ._files import open_regular, remove_stale_partials
from ._file_metadata import (
    FLOAT_NAMES, FileMetadata, LayerEntry, cast_params, global_values, layer_entry, parse_metadata,
)
from ._cast_hooks import add_cast_hooks, model_float_dtype
from ._safetensors import tensor_crc32
from ._skeleton import fill_skeleton
from .errors import CorruptFileError
from .formats import RangeProblem, format_for_module, format_for_state
from .info import QuantizationInfo
from .state_dict import group_by_layer, join_key, split_key

SUFFIXES = {".safetensors": "safetensors", ".pt": "pt"}
_PT_KEYS = {"tensors", "metadata"}
_QUANT_STATE_KEYS = ("weight_scale", "weight_zero_point")


def save_quantized(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    info: QuantizationInfo | None = None,
) -> Path:
    """Write a quantized model (or a quantized state_dict) to ``path``: ``.safetensors`` (needs
    the ``safetensors`` package) or ``.pt``. ``info``, the report of ``dynamic_quantize``, adds
    each layer's scheme, original dtype and SQNR to the metadata. Tied tensors are stored once.
    The file appears complete or not at all (written to ``<path>.partial``, then renamed); the
    scratch files a killed save left next to ``path`` (``<path>.partial``, ``<path>.data.partial``)
    are removed first.

    >>> qmodel, info = dynamic_quantize(model, "int8")
    >>> save_quantized(qmodel, "model.safetensors", info)
    """
    kind = file_kind(path)
    library = require_safetensors() if kind == "safetensors" else None
    check_folder(path)
    tensors, meta = prepare_for_saving(model, info)
    partial = os.fspath(path) + ".partial"
    remove_stale_partials(path)  # never write through a link a stale scratch name may be
    try:
        if library is not None:
            _save_safetensors(library, tensors, partial, meta.to_strings())
        else:
            torch.save({"tensors": tensors, "metadata": meta.to_strings()}, partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return Path(path)


def _save_safetensors(library, tensors: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, str]) -> None:
    """``safetensors.torch.save_file``, which converts tensors through numpy; without numpy the
    same file layout is written by mono_quant's own writer (one tensor at a time)."""
    try:
        library.save_file(tensors, path, metadata=dict(metadata))
    except ModuleNotFoundError as exc:
        if exc.name != "numpy":
            raise
        writer = st.StreamingWriter(path)
        try:
            for name, tensor in tensors.items():
                writer.write(name, tensor)
            writer.finish(metadata)
        except BaseException:
            writer.abort()
            raise


def load_quantized(path: str | os.PathLike[str], model: nn.Module | None = None, *,
                   buffers_from: nn.Module | Mapping[str, torch.Tensor] | None = None):
    """Load a file written by ``save_quantized`` or ``quantize_checkpoint``.

    With ``model``, a float model of the same architecture (on the CPU or the meta device:
    ``with torch.device("meta"): model = Net()``), the model is filled IN PLACE and returned:
    each quantized layer's float module is replaced by its quantized module, every other
    parameter and buffer is replaced by the file's tensor (so a float16 file gives a float16
    model; one of dtype "fp16" takes and returns the skeleton's dtype, as ``dynamic_quantize``
    made it), tied parameters stay tied, and training flags are kept. Loaded tensors are on the
    CPU. Nothing is changed unless the whole file matches the model (then the return value is
    ``model``, or the new module when the root itself is a quantized layer).

    Non-persistent buffers (``register_buffer(..., persistent=False)``: transformers'
    ``position_ids``, rotary ``inv_freq``) are not in any file. A meta skeleton's get theirs
    from ``buffers_from`` (a model of the same architecture built on the CPU, e.g. from the same
    config, or a ``{name: tensor}`` dict), else from the model's own initialisation when it has
    one (transformers models: ``_init_weights``), else the load is refused naming the buffer.
    So ``with torch.device("meta"): model = AutoModel.from_config(config)`` loads as it is.

    Without ``model``, returns ``(state_dict, metadata)``: the tensors under their names in
    the file (aliases expanded) and the decoded metadata (``metadata["layers"]`` per layer).

    >>> with torch.device("meta"):
    ...     skeleton = Net()
    >>> qmodel = load_quantized("model.safetensors", skeleton)
    """
    tensors, meta = read_quantized(path)
    if model is None:
        return tensors, meta.as_dict()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module skeleton of the saved architecture; got {type(model).__name__}")
    interface = model_float_dtype(model)  # the skeleton's dtype, before the file's replace it
    root = fill_skeleton(model, tensors, meta, os.fspath(path), buffers_from)
    if meta.values.get("dtype") == "fp16":  # as dynamic_quantize made it (schemes/fp16.py)
        add_cast_hooks(root, torch.float16, interface)
    return root


def read_quantized(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], FileMetadata]:
    """The checked tensors (aliases expanded) and metadata of a mono_quant file.

    >>> tensors, meta = read_quantized("model.safetensors")
    >>> meta.layers["fc"].kind
    'int8_linear'
    """
    kind = file_kind(path)
    raw, raw_meta = _read_safetensors(path) if kind == "safetensors" else _read_pt(path)
    meta = parse_metadata(raw_meta, path)
    _check_checksums(raw, meta, path)
    tensors = _expand_aliases(raw, meta, path)
    check_layer_tensors(tensors, meta, path)
    check_layer_values(tensors, meta, path)
    return tensors, meta


def read_metadata(path: str | os.PathLike[str]) -> tuple[FileMetadata, dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """Metadata plus each stored tensor's dtype and shape, without reading tensor data when
    the file is ``.safetensors`` (a ``.pt`` file is loaded whole). Used by ``mono-quant inspect``."""
    if file_kind(path) == "pt":
        tensors, meta = read_quantized(path)
        return meta, {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    with open_regular(path) as handle:
        header = st.read_header(handle, path, require_metadata=True)
    meta = parse_metadata(header.metadata, path)
    shapes = {name: (e.dtype, e.shape) for name, e in header.tensors.items()}
    for alias, target in meta.aliases.items():
        if target in shapes:
            shapes[alias] = shapes[target]
    return meta, shapes


def file_kind(path: str | os.PathLike[str]) -> str:
    """"safetensors" or "pt" from the suffix; anything else is a ValueError naming both."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{os.fspath(path)}: unknown file type {suffix or '(no suffix)'!r}; "
                         "use a path ending in .safetensors or .pt")
    return SUFFIXES[suffix]


def check_folder(path: str | os.PathLike[str]) -> None:
    """A FileNotFoundError that says what to do when ``path``'s folder does not exist."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{os.fspath(path)}: the folder {folder} does not exist; create it first")


def require_safetensors():
    """The ``safetensors.torch`` module, or a ModuleNotFoundError that says how to install it."""
    try:
        import safetensors.torch
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "writing .safetensors files needs the safetensors package: pip install 'mono_quant[safetensors]' "
            "(or use a .pt path)"
        ) from None
    return safetensors.torch


# ---------------------------------------------------------------------------------------------
# Saving: collect the tensors and describe them.
# ---------------------------------------------------------------------------------------------


def prepare_for_saving(
    model: nn.Module | Mapping[str, torch.Tensor], info: QuantizationInfo | None
) -> tuple[dict[str, torch.Tensor], FileMetadata]:
    """The tensors to store (tied ones once, contiguous, on the CPU) and the metadata."""
    if isinstance(model, nn.Module):
        state, layout, model_class = model.state_dict(), "module", _class_name(type(model))
        layers = _module_layers(model, state, info)
    elif isinstance(model, Mapping):
        state, layout, model_class = dict(model), "state_dict", "state_dict"
        layers = _state_layers(state, info)
    else:
        raise TypeError(f"model must be an nn.Module or a state_dict; got {type(model).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}; only tensors can be saved")
    tensors, aliases = _unique_tensors(state)
    schemes = [entry.scheme for entry in layers.values()]
    dtype, group_size = run_dtype(layers, tensors, info)
    meta = FileMetadata(global_values(layout, dtype, group_size, schemes, model_class), layers, aliases,
                        {name: tensor_crc32(t) for name, t in tensors.items()})
    try:
        check_layer_tensors(_expand_aliases(tensors, meta, "(not saved)"), meta, "(not saved)")
    except CorruptFileError as exc:
        raise ValueError(f"info does not describe this model ({exc.problem}); pass the info returned "
                         "together with this model, or none") from None
    try:
        check_layer_values(_expand_aliases(tensors, meta, "(not saved)"), meta, "(not saved)")
    except CorruptFileError as exc:
        raise ValueError(f"cannot save: {exc.problem.removesuffix(_VALUES_HINT)}; a file holding it would not "
                         "load. Quantize the layer again from its float weights") from None
    return tensors, meta


def _module_layers(model: nn.Module, state: Mapping[str, torch.Tensor], info: QuantizationInfo | None) -> dict:
    records = {} if info is None else info.layers
    layers = {}
    for name, module in model.named_modules():
        fmt = format_for_module(module)
        if fmt is not None:
            layers[name] = layer_entry(name, fmt, fmt.params(module), records.get(name))
    groups = group_by_layer(state)
    for name, record in records.items():
        if name not in layers and record.quantized and "cast" in record.details and name in groups:
            params = cast_params(record, groups[name])
            if params is not None:
                layers[name] = layer_entry(name, None, params, record)
    return layers


def _state_layers(state: Mapping[str, torch.Tensor], info: QuantizationInfo | None) -> dict:
    records = {} if info is None else info.layers
    layers = {}
    for prefix, tensors in group_by_layer(state).items():
        entry = state_layer_entry(prefix, tensors, records.get(prefix))
        if entry is not None:
            layers[prefix] = entry
    return layers


def state_layer_entry(prefix: str, tensors: Mapping[str, torch.Tensor], record) -> LayerEntry | None:
    """The metadata record of one state_dict layer (keys without the prefix), or None for a
    layer stored as it was. ``record`` is its LayerInfo, if known."""
    if any(k in tensors for k in _QUANT_STATE_KEYS):
        found = format_for_state(tensors)
        if found is None:
            raise ValueError(f"layer {prefix!r} has weight_scale / weight_zero_point entries in a format no "
                             "registered layer format reads; was it made by mono_quant?")
        return layer_entry(prefix, found[0], found[1], record)
    if record is not None and record.quantized and "cast" in record.details:
        params = cast_params(record, tensors)
        if params is not None:
            return layer_entry(prefix, None, params, record)
    return None


def _unique_tensors(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each distinct tensor once (others become aliases), as a contiguous CPU tensor that owns
    its storage: views and tensors sharing memory are copied (safetensors refuses aliasing,
    and torch.save would write a view's whole storage)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.is_meta:
            raise ValueError(f"{name!r} is on the meta device (its values were never loaded) and cannot be "
                             "saved; load the weights first")
        st.safetensors_dtype(tensor.dtype)
        if tensor.numel():
            key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                   tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        unique[name] = tensor
    sharing = Counter((t.device, t.untyped_storage().data_ptr()) for t in unique.values() if t.numel())
    out = {}
    for name, tensor in unique.items():
        cpu = tensor.to("cpu")
        owns = (cpu.is_contiguous() and cpu.storage_offset() == 0
                and cpu.untyped_storage().nbytes() == cpu.numel() * cpu.element_size())
        shared = tensor.numel() and sharing[(tensor.device, tensor.untyped_storage().data_ptr())] > 1
        out[name] = cpu if owns and not shared else cpu.clone(memory_format=torch.contiguous_format)
    return out, aliases


def run_dtype(layers: Mapping, tensors: Mapping[str, torch.Tensor], info: QuantizationInfo | None) -> tuple[str, int | None]:
    """The ``dtype`` and ``group_size`` metadata: the run's config, else what the layers are."""
    config = None if info is None else info.config
    if config is not None:
        return config.dtype, (config.group_size if config.dtype == "int4" else None)
    schemes = sorted({entry.fmt.scheme for entry in layers.values() if entry.fmt is not None})
    group_sizes = {entry.params.get("group_size") for entry in layers.values()} - {None}
    group_size = next(iter(group_sizes)) if len(group_sizes) == 1 else None
    if schemes:
        return ",".join(schemes), group_size
    has_half = any(t.dtype == torch.float16 for t in tensors.values())
    return ("fp16" if has_half else "none"), None


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------------------------
# Reading: the two containers, then checks that do not need a model.
# ---------------------------------------------------------------------------------------------


def _read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with open_regular(path) as handle:
        header = st.read_header(handle, path, require_metadata=True)
        tensors = {name: st.read_tensor(handle, entry, path) for name, entry in header.tensors.items()}
    return tensors, header.metadata


def _read_pt(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    obj = load_pt_untrusted(path, "a mono_quant .pt file")
    if not isinstance(obj, dict) or set(obj) != _PT_KEYS:
        raise CorruptFileError(path, "a mono_quant .pt file holds a dict with exactly the keys 'tensors' and "
                                     "'metadata'; this one does not")
    tensors, metadata = obj["tensors"], obj["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptFileError(path, "'metadata' must map strings to strings")
    if not isinstance(tensors, dict):
        raise CorruptFileError(path, "'tensors' must be a dict of tensors")
    out = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or type(tensor) is not torch.Tensor:
            raise CorruptFileError(path, f"'tensors' entry {name!r} is not a plain tensor under a string name")
        if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.dtype not in st.DTYPE_NAMES:
            raise CorruptFileError(path, f"tensor {name!r} is {tensor.dtype} / {tensor.layout} on {tensor.device}; "
                                         "only dense CPU tensors of the safetensors dtypes are allowed")
        out[name] = tensor.contiguous()
    return out, metadata


def load_pt_untrusted(path, what: str):
    """``torch.load(weights_only=True)`` of a regular file (the unpickler builds tensors and
    plain containers only, never runs code); whatever torch raises for a damaged zip or pickle
    is a ``CorruptFileError`` saying the file is not ``what``."""
    with open_regular(path) as handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for damaged zips and pickles
            detail = " ".join(str(exc).split())[:200]
            problem = f"torch.load(weights_only=True) cannot read it ({type(exc).__name__}: {detail})"
    raise CorruptFileError(path, f"{problem}; the file is truncated, corrupted or not {what}")


def _check_checksums(raw: Mapping[str, torch.Tensor], meta: FileMetadata, path) -> None:
    listed, stored = set(meta.checksums), set(raw)
    if listed != stored:
        missing = sorted(listed - stored)
        if missing:
            raise CorruptFileError(path, f"tensor {missing[0]!r} is listed in the metadata but missing from the file"
                                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        extra = sorted(stored - listed)
        raise CorruptFileError(path, f"tensor {extra[0]!r} is in the file but not in the metadata's checksums")
    for name, tensor in raw.items():
        if tensor_crc32(tensor) != meta.checksums[name]:
            raise CorruptFileError(path, f"tensor {name!r} fails its CRC-32 check; its bytes are corrupted")


def _expand_aliases(raw: Mapping[str, torch.Tensor], meta: FileMetadata, path) -> dict[str, torch.Tensor]:
    tensors = dict(raw)
    for alias, target in meta.aliases.items():
        if alias in raw or target not in raw:
            raise CorruptFileError(path, f"alias {alias!r} -> {target!r} is invalid: an alias must name a tensor "
                                         "that is not stored, pointing to one that is")
        tensors[alias] = raw[target]
    return tensors


def check_layer_tensors(tensors: Mapping[str, torch.Tensor], meta: FileMetadata, path) -> None:
    """Each layer record against its tensors: all present, of the right dtype and shape, and
    nothing else under the layer's name. In the state_dict layout, every layer with
    weight_scale / weight_zero_point entries must have a record."""
    groups: dict[str, set[str]] = {}
    for key in tensors:
        prefix, attr = split_key(key)
        groups.setdefault(prefix, set()).add(attr)
    for entry in meta.layers.values():
        if entry.fmt is None:
            want = _cast_dtype(entry)
            for name in entry.params["tensors"]:
                key = join_key(entry.name, name)
                if key not in tensors:
                    raise CorruptFileError(path, f"layer {entry.name!r}: tensor {key!r} is missing")
                if tensors[key].dtype != want:
                    raise CorruptFileError(path, f"layer {entry.name!r}: tensor {key!r} is {tensors[key].dtype}, "
                                                 f"but the metadata says it was cast to {want}")
            continue
        expected = entry.fmt.expected_tensors(entry.params)
        keys = {meta.file_key(entry, name): spec for name, spec in expected.items()}
        for key, spec in keys.items():
            if key not in tensors:
                raise CorruptFileError(path, f"layer {entry.name!r} ({entry.kind}): tensor {key!r} is missing")
            problem = spec.problem(tensors[key])
            if problem:
                raise CorruptFileError(path, f"layer {entry.name!r} ({entry.kind}): tensor {key!r} {problem}")
        extra = sorted(join_key(entry.name, a) for a in groups.get(entry.name, set()))
        extra = [key for key in extra if key not in keys]
        if extra:
            raise CorruptFileError(path, f"layer {entry.name!r} ({entry.kind}): unexpected tensor {extra[0]!r}")
    if meta.layout == "state_dict":
        for prefix, attrs in groups.items():
            if attrs & set(_QUANT_STATE_KEYS) and prefix not in meta.layers:
                raise CorruptFileError(path, f"layer {prefix!r} holds quantized tensors but the metadata has no "
                                             "record of it")


_VALUES_HINT = "; the file was altered or written by a broken tool"


def check_layer_values(tensors: Mapping[str, torch.Tensor], meta: FileMetadata, path) -> None:
    """Each format layer's values against the ranges its format allows (``range_problems``:
    scales finite and > 0, zero points inside their range, ...), on the canonical tensors
    before any module is built; the first problem is a ``CorruptFileError`` naming the tensor.
    Run after ``check_layer_tensors`` (dtypes and shapes are right)."""
    for entry in meta.layers.values():
        if entry.fmt is None:
            continue
        problems = entry.fmt.range_problems(entry.params, layer_tensors(entry, tensors, meta))
        if problems:
            where = _name_problem(problems[0], lambda name, entry=entry: meta.file_key(entry, name))
            raise CorruptFileError(path, f"layer {entry.name!r} ({entry.kind}): {where}{_VALUES_HINT}")


def check_state_layer(entry: LayerEntry, tensors: Mapping[str, torch.Tensor], path) -> None:
    """``check_layer_tensors`` and ``check_layer_values`` for one state_dict-layout layer whose
    tensors are keyed without the layer prefix (``weight``, ``weight_scale``, ...), as
    ``quantize_checkpoint`` has them: a layer that would make a file its loader refuses is a
    ``CorruptFileError`` naming ``path``, the checkpoint it came from."""
    fmt, where = entry.fmt, f"layer {entry.name!r} ({entry.kind})"
    own = fmt.to_module_names(tensors)
    for name, spec in fmt.expected_tensors(entry.params).items():
        key = join_key(entry.name, fmt.state_key(name))
        problem = "is missing" if name not in own else spec.problem(own[name])
        if problem:
            raise CorruptFileError(path, f"{where}: tensor {key!r} {problem}; the checkpoint's tensors of this "
                                         "layer do not fit together")
    problems = fmt.range_problems(entry.params, own)
    if problems:
        raise CorruptFileError(path, f"{where}: {_name_problem(problems[0], lambda n: join_key(entry.name, fmt.state_key(n)))}"
                                     + _VALUES_HINT)


def _name_problem(problem, file_key) -> str:
    """"tensor 'fc.scale' has ..." for a RangeProblem (``file_key`` maps the module tensor
    name to the key in the file); a plain string from an older format is used as it is."""
    if isinstance(problem, RangeProblem):
        return f"tensor {file_key(problem.tensor)!r} {problem.problem}"
    return str(problem)


def _cast_dtype(entry) -> torch.dtype:
    return FLOAT_NAMES[entry.params["dtype"]]


def layer_tensors(entry, tensors: Mapping[str, torch.Tensor], meta: FileMetadata) -> dict[str, torch.Tensor]:
    """The tensors of a format layer under module names (``qweight``, ``scale``, ...)."""
    return {name: tensors[meta.file_key(entry, name)] for name in entry.fmt.expected_tensors(entry.params)}

