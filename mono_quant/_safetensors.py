"""The safetensors file format, read and written here without the safetensors library.

Layout (https://github.com/huggingface/safetensors): 8 bytes little-endian unsigned header
length ``N``; ``N`` bytes of UTF-8 JSON, ``{"__metadata__": {str: str}, name: {"dtype": "F32",
"shape": [..], "data_offsets": [begin, end]}, ...}``, possibly padded with spaces; then the
data section, where each tensor's little-endian bytes lie at ``[begin, end)`` relative to the
start of the section, with no holes and no overlaps.

The reader trusts nothing: every length, offset, shape and dtype is checked against the
file's real size before a byte of data is read, and any problem is a ``CorruptFileError``
naming the file. Data is read with plain ``readinto`` calls into fresh buffers (no mmap), so a
lying header can never make it read out of bounds.

The writer streams: tensors go to the data section one at a time, the header (computed from
the shapes written) goes in front at the end. Memory stays at one tensor.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch

from ._files import remove_stale_partials
from ._json import brief, loads_untrusted
from .errors import CorruptFileError

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library enforces
MAX_TENSOR_BYTES = 2**63 - 1  # torch's int64 sizes and strides
HEADER_BASE_BYTES = 4 << 20  # see header_limit
HEADER_DATA_RATIO = 16
QUICK_PARSE_BYTES = 1 << 20  # a header this small parses in milliseconds
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
METADATA_KEY = "__metadata__"
_COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: ``nbytes`` bytes from absolute file offset ``start``."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


@dataclass(frozen=True)
class Header:
    """A checked header: tensors in data order, the string metadata, the file size."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    file_size: int


def safetensors_dtype(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"F32"``; a dtype the format cannot hold is a ValueError."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(
            f"{dtype} cannot be stored in a safetensors file (supported: "
            f"{', '.join(str(d).removeprefix('torch.') for d in DTYPE_NAMES)})"
        ) from None


def read_header(handle: BinaryIO, path: str | os.PathLike[str], *, require_metadata: bool = False) -> Header:
    """Read and check the header of the safetensors file open as ``handle``.

    The cheap checks come first, before the header is read or parsed: its length against
    ``header_limit`` of the data that follows (a header bomb of a million empty entries is
    refused at once), then, with ``require_metadata``, that a header over ``QUICK_PARSE_BYTES``
    holds ``__metadata__`` at all.

    >>> with open("model.safetensors", "rb") as f:
    ...     header = read_header(f, "model.safetensors")
    """
    _require_little_endian()
    file_size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    if file_size < 8:
        raise CorruptFileError(path, f"the file is {file_size} bytes, too short for the 8-byte header "
                                     "length of a safetensors file; it is truncated or of another format")
    length = int.from_bytes(handle.read(8), "little")
    if length < 2 or length > MAX_HEADER_BYTES:
        raise CorruptFileError(path, f"the header length is {length} bytes; a safetensors header holds "
                                     f"2 to {MAX_HEADER_BYTES} bytes, so this is not a valid safetensors file")
    if 8 + length > file_size:
        raise CorruptFileError(path, f"the header length is {length} bytes but only {file_size - 8} "
                                     "bytes follow it; the file is truncated")
    data_size = file_size - 8 - length
    if length > header_limit(data_size):
        raise CorruptFileError(path, f"the header is {length} bytes for {data_size} bytes of tensor data; a real "
                                     f"header needs at most {HEADER_BASE_BYTES} bytes plus 1/{HEADER_DATA_RATIO} of "
                                     "the data, so the file is corrupted or built to exhaust memory")
    raw = handle.read(length)
    # A large header is scanned before it is parsed: without escapes (which no writer uses for
    # ASCII keys) the key appears verbatim if present. A small one is parsed, for the exact error.
    if (require_metadata and length > QUICK_PARSE_BYTES and METADATA_KEY.encode() not in raw
            and b"\\" not in raw):
        raise CorruptFileError(path, f"the header has no {METADATA_KEY!r}; this is not a mono_quant file (read plain "
                                     "checkpoints with safetensors.torch.load_file)")
    header = _parse_json(raw, path)
    del raw
    metadata = _parse_metadata(header.pop(METADATA_KEY, None), path)
    entries = [_parse_entry(name, value, 8 + length, data_size, path) for name, value in header.items()]
    entries.sort(key=lambda e: (e.start, e.nbytes))
    _check_coverage(entries, 8 + length, data_size, path)
    return Header({e.name: e for e in entries}, metadata, file_size)


def header_limit(data_size: int) -> int:
    """The largest header accepted in front of ``data_size`` bytes of tensor data:
    ``HEADER_BASE_BYTES + data_size // HEADER_DATA_RATIO``, at most ``MAX_HEADER_BYTES``.

    A tensor's record takes ~100 bytes of header plus ~150 of mono_quant metadata (its CRC and
    its share of a layer record), so the base alone holds ~16,000 tensors with no data at all;
    past that, a real model's data outweighs its header many times over (a 4096 x 4096 weight
    is 16 MiB of data for one record). Parsing stays proportional to reading the data.

    >>> header_limit(0)
    4194304
    """
    return min(MAX_HEADER_BYTES, HEADER_BASE_BYTES + data_size // HEADER_DATA_RATIO)


def read_tensor(handle: BinaryIO, entry: TensorEntry, path: str | os.PathLike[str]) -> torch.Tensor:
    """The tensor ``entry`` describes, in a fresh, writable CPU buffer.

    >>> t = read_tensor(f, header.tensors["fc.weight"], "model.safetensors")
    """
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    handle.seek(entry.start)
    buffer = bytearray(entry.nbytes)
    got = handle.readinto(buffer)
    if got != entry.nbytes:
        raise CorruptFileError(path, f"tensor {brief(entry.name)}: read {got} of {entry.nbytes} bytes; "
                                     "the file is truncated or changed while it was read")
    if entry.dtype == torch.bool:  # any byte but 0/1 would be undefined behaviour as torch.bool
        return torch.frombuffer(buffer, dtype=torch.uint8).reshape(entry.shape) != 0
    return torch.frombuffer(buffer, dtype=entry.dtype).reshape(entry.shape)


def header_bytes(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length plus the JSON header for tensors laid out back to back in ``specs``
    order, padded with spaces so that the data starts 8-byte aligned (as the library does).

    >>> header_bytes([("w", torch.float32, (2, 2))], {"format": "mono_quant"})[:8]
    b'X\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": safetensors_dtype(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


class StreamingWriter:
    """Writes a ``.safetensors`` file one tensor at a time; memory stays at one tensor.

    The header must precede the data but depends on every tensor written, so tensors go to a
    scratch data file next to ``path``; ``finish`` then writes header + data to
    ``<path>.partial`` (16 MiB at a time) and renames it onto ``path``. A failure leaves
    ``path`` untouched; scratch files a killed run left are removed when the writer opens.
    Disk use peaks at twice the output size.

    >>> with StreamingWriter("out.safetensors") as writer:
    ...     writer.write("fc.weight", q)
    ...     writer.finish({"format": "mono_quant"})
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        _require_little_endian()
        self.path = os.fspath(path)
        self._data_path = self.path + ".data.partial"
        self._out_path = self.path + ".partial"
        remove_stale_partials(self.path)  # left by a killed run; never written through
        self._data: BinaryIO | None = open(self._data_path, "wb")
        self._specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        self._names: set[str] = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (any device; copied to a contiguous CPU tensor) as ``name``."""
        if self._data is None:
            raise RuntimeError("this writer is finished; open a new one")
        if name in self._names or name == METADATA_KEY:
            raise ValueError(f"tensor name {name!r} is used twice (or reserved); names must be unique")
        safetensors_dtype(tensor.dtype)
        tensor = tensor.detach().to("cpu").contiguous()
        write_tensor_bytes(self._data, tensor)
        self._names.add(name)
        self._specs.append((name, tensor.dtype, tuple(tensor.shape)))

    def finish(self, metadata: Mapping[str, str]) -> None:
        """Write the header and the data to ``path``."""
        if self._data is None:
            raise RuntimeError("this writer is finished; open a new one")
        self._data.close()
        self._data = None
        with open(self._data_path, "rb") as data, open(self._out_path, "wb") as out:
            out.write(header_bytes(self._specs, metadata))
            shutil.copyfileobj(data, out, _COPY_CHUNK)
        os.replace(self._out_path, self.path)
        os.remove(self._data_path)

    def abort(self) -> None:
        """Drop everything written; ``path`` is not touched."""
        if self._data is not None:
            self._data.close()
            self._data = None
        for scratch in (self._data_path, self._out_path):
            if os.path.exists(scratch):
                os.remove(scratch)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._data is not None:
            self.abort()


def write_tensor_bytes(handle: BinaryIO, tensor: torch.Tensor) -> None:
    """Write the raw bytes of a contiguous CPU tensor without copying it (host byte order)."""
    if tensor.numel():
        handle.write(_raw_bytes(tensor))


def tensor_crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of a contiguous CPU tensor's bytes (0 for an empty tensor)."""
    return zlib.crc32(_raw_bytes(tensor)) if tensor.numel() else 0


def _raw_bytes(tensor: torch.Tensor):
    """A buffer over the tensor's memory (no copy); the tensor must outlive its use."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("raw bytes need a contiguous CPU tensor")
    return (ctypes.c_ubyte * (tensor.numel() * tensor.element_size())).from_address(tensor.data_ptr())


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("mono_quant reads and writes safetensors files on little-endian hosts only")


def _parse_json(raw: bytes, path) -> dict:
    def no_duplicates(pairs):
        out = dict(pairs)  # built in C; the pairs are only looked at when a key repeats
        if len(out) != len(pairs):
            seen = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise CorruptFileError(path, f"the header names {brief(key)} twice")
        return out

    try:
        header = loads_untrusted(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise CorruptFileError(path, "the header is not UTF-8 text; the file is corrupted or not safetensors") from None
    except CorruptFileError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN / Infinity literals, nesting
        raise CorruptFileError(path, f"the header is not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(header, dict):
        raise CorruptFileError(path, f"the header is a JSON {type(header).__name__}, not an object")
    return header


def _parse_metadata(value, path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CorruptFileError(path, f"{METADATA_KEY!r} must map strings to strings; it is {brief(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise CorruptFileError(path, f"{METADATA_KEY!r} must map strings to strings; field {brief(key)} "
                                         f"is {brief(item)}")
    return value


def _parse_entry(name: str, value, data_start: int, data_size: int, path) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != ENTRY_KEYS:
        raise CorruptFileError(path, f"tensor {brief(name)}: the entry must have exactly the keys "
                                     "'dtype', 'shape' and 'data_offsets'")
    dtype = DTYPES.get(value["dtype"]) if isinstance(value["dtype"], str) else None
    if dtype is None:
        raise CorruptFileError(path, f"tensor {brief(name)} has unknown dtype {brief(value['dtype'])} "
                                     f"(known: {', '.join(DTYPES)})")
    shape, offsets = value["shape"], value["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CorruptFileError(path, f"tensor {brief(name)}: shape {brief(shape)} must be a list of integers >= 0")
    # torch indexes elements and bytes with int64: the strides (products of the dimensions,
    # an empty one counting as 1) must fit, also for a tensor that holds no data.
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > MAX_TENSOR_BYTES:
        raise CorruptFileError(path, f"tensor {brief(name)}: shape {brief(shape)} is too large: its dimensions "
                                     f"multiply beyond {MAX_TENSOR_BYTES} bytes, more than torch can index")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1]):
        raise CorruptFileError(path, f"tensor {brief(name)}: data_offsets {brief(offsets)} must be [begin, end] "
                                     "with 0 <= begin <= end")
    begin, end = offsets
    if end > data_size:
        raise CorruptFileError(path, f"tensor {brief(name)} ends at byte {end} of the data section, which has "
                                     f"only {data_size} bytes; the file is truncated or the offsets are wrong")
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CorruptFileError(path, f"tensor {brief(name)}: shape {shape} of {value['dtype']} needs {expected} "
                                     f"bytes but data_offsets span {end - begin}")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, end - begin)


def _check_coverage(entries: list[TensorEntry], data_start: int, data_size: int, path) -> None:
    cursor = 0
    for entry in entries:
        begin = entry.start - data_start
        if begin != cursor:
            what = "overlaps the tensor before it" if begin < cursor else f"leaves a hole at bytes {cursor}..{begin}"
            raise CorruptFileError(path, f"tensor {brief(entry.name)} {what}; the data offsets are corrupted")
        cursor = begin + entry.nbytes
    if cursor != data_size:
        raise CorruptFileError(path, f"the data section has {data_size} bytes but the tensors cover "
                                     f"{cursor}; the file has trailing bytes or is corrupted")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
