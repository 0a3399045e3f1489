"""The metadata of a saved file: building it from a model or state_dict, and parsing it back.

Every value is a string (safetensors allows nothing else); structured values are JSON.

Global keys:
  format              "mono_quant"
  format_version      "1"
  layout              "module" (tensors named like the quantized model's state_dict:
                      ``fc.qweight``, ``fc.scale``, ...) or "state_dict" (named like
                      ``dynamic_quantize(state_dict)`` output: ``fc.weight``, ``fc.weight_scale``, ...)
  mono_quant_version  the version that wrote the file
  torch_version       torch's version at writing time
  dtype               "int8", "int4", "fp16" (the run's dtype), or "none"
  group_size          the int4 group size, or "none"
  scheme              the layers' schemes, e.g. "int8 per-channel symmetric" ("; " between several)
  model_class         the model's class, "module.QualName", or "state_dict"
  aliases             JSON {name: name}: tensors stored once under another name (tied weights)
  checksums           JSON {name: crc32}: CRC-32 of each stored tensor's bytes
Per layer, ``layer:<module name>`` holds a JSON object:
  kind                a registered layer format ("int8_linear", "int8_conv2d", "int4_linear",
                      "int8_embedding", ...)
                      or "cast" (floating tensors cast to another float dtype, e.g. fp16)
  original_shape      the float weight's shape
  original_dtype      the float weight's dtype ("float32"), or null when unknown
  scheme              one line, e.g. "int8 per-channel symmetric"
  sqnr_db             the weight's SQNR in dB (a number, "inf", or null when not measured)
  ...                 the format's own fields (bias, symmetric, per_channel, group_size, ...);
                      "cast" layers have ``dtype`` and ``tensors`` (the names cast).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._json import brief, loads_untrusted
from ._layers import dtype_name
from .errors import CorruptFileError
from .formats import LayerFormat, get_format
from .formats.base import require

FORMAT_NAME = "mono_quant"
FORMAT_VERSION = "1"
LAYOUTS = ("module", "state_dict")
LAYER_PREFIX = "layer:"
CAST_KIND = "cast"
REQUIRED_KEYS = ("format", "format_version", "layout", "aliases", "checksums")
_EXTRA_FIELDS = ("kind", "scheme", "original_dtype", "sqnr_db")
FLOAT_NAMES = {dtype_name(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@dataclass(frozen=True)
class LayerEntry:
    """One ``layer:<name>`` record. ``fmt`` is None for "cast" layers."""

    name: str
    kind: str
    fmt: LayerFormat | None
    params: dict[str, Any]
    scheme: str = ""
    original_dtype: str | None = None
    sqnr_db: float | None = None

    def to_json(self) -> str:
        record = {"kind": self.kind, **self.params, "scheme": self.scheme,
                  "original_dtype": self.original_dtype, "sqnr_db": _encode_number(self.sqnr_db)}
        return json.dumps(record, separators=(",", ":"), allow_nan=False)

    def tensor_names(self) -> list[str]:
        """The names (relative to the layer, module naming) of the tensors it holds."""
        if self.fmt is None:
            return list(self.params["tensors"])
        return list(self.fmt.expected_tensors(self.params))


@dataclass
class FileMetadata:
    """Parsed metadata: the global strings plus the decoded JSON parts."""

    values: dict[str, str]
    layers: dict[str, LayerEntry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, int] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return self.values["layout"]

    def file_key(self, layer: LayerEntry, name: str) -> str:
        """The key in the file of tensor ``name`` (module naming) of ``layer``."""
        key = layer.fmt.state_key(name) if (layer.fmt is not None and self.layout == "state_dict") else name
        return f"{layer.name}.{key}" if layer.name else key

    def to_strings(self) -> dict[str, str]:
        out = dict(self.values)
        out["aliases"] = json.dumps(self.aliases, separators=(",", ":"), sort_keys=True)
        out["checksums"] = json.dumps(self.checksums, separators=(",", ":"), sort_keys=True)
        out.update((LAYER_PREFIX + name, entry.to_json()) for name, entry in self.layers.items())
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data for users: the global strings, ``aliases``, ``checksums`` and ``layers``
        (name -> the decoded JSON record)."""
        layers = {name: json.loads(entry.to_json()) for name, entry in self.layers.items()}
        return {**self.values, "aliases": dict(self.aliases), "checksums": dict(self.checksums), "layers": layers}


def global_values(layout: str, dtype: str, group_size: int | None, schemes: list[str], model_class: str) -> dict[str, str]:
    from . import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "mono_quant_version": __version__,
        "torch_version": str(torch.__version__),
        "dtype": dtype,
        "group_size": "none" if group_size is None else str(group_size),
        "scheme": "; ".join(dict.fromkeys(s for s in schemes if s)) or "none",
        "model_class": model_class,
    }


def parse_metadata(raw: Mapping[str, str], path) -> FileMetadata:
    """Check and decode the metadata of a file; any problem is a ``CorruptFileError``."""
    if raw.get("format") != FORMAT_NAME:
        raise CorruptFileError(path, "this is not a mono_quant file (its metadata has no format='mono_quant'); "
                                     "read plain checkpoints with safetensors.torch.load_file or torch.load")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise CorruptFileError(path, f"the metadata has no {key!r} entry; the file is damaged")
    if raw["format_version"] != FORMAT_VERSION:
        raise CorruptFileError(path, f"format_version {brief(raw['format_version'])} is not supported (this mono_quant "
                                     f"reads version {FORMAT_VERSION}); upgrade mono_quant")
    if raw["layout"] not in LAYOUTS:
        raise CorruptFileError(path, f"layout {brief(raw['layout'])} is not one of {', '.join(LAYOUTS)}")
    meta = FileMetadata({k: v for k, v in raw.items() if not k.startswith(LAYER_PREFIX) and k not in ("aliases", "checksums")})
    meta.aliases = _json_map(raw["aliases"], "aliases", lambda v: isinstance(v, str), path)
    meta.checksums = _json_map(raw["checksums"], "checksums",
                               lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32, path)
    for key, text in raw.items():
        if key.startswith(LAYER_PREFIX):
            name = key[len(LAYER_PREFIX):]
            meta.layers[name] = _parse_layer(name, _json_value(text, f"of layer {name!r}", path), path)
    return meta


def layer_entry(name: str, fmt: LayerFormat | None, params: dict[str, Any], record=None) -> LayerEntry:
    """A layer's entry; ``record`` (a LayerInfo) adds the scheme, original dtype and SQNR."""
    details = {} if record is None else record.details
    original_dtype = details.get("weight_dtype") or details.get("original_dtype") or None
    scheme = record.scheme if record is not None else (fmt.describe(params) if fmt else "")
    return LayerEntry(name, CAST_KIND if fmt is None else fmt.kind, fmt, params, scheme, original_dtype,
                      None if record is None else record.sqnr_db)


def cast_params(record, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """Params of a "cast" layer (fp16) from its LayerInfo and its tensors, or None."""
    names = [k for k in record.details.get("cast", []) if k in tensors]
    if not names:
        return None
    return {"dtype": record.dtype, "tensors": names, "original_shape": list(record.shape)}


def parse_layer_record(name: str, record: Any, where) -> LayerEntry:
    """A layer record as ``LayerEntry.to_json`` writes it, decoded and checked (a
    ``CorruptFileError`` naming ``where`` otherwise); also used for transformers' config.json."""
    return _parse_layer(name, record, where)


def _parse_layer(name: str, record: Any, path) -> LayerEntry:
    where = f"layer {name!r}"
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        raise CorruptFileError(path, f"{where}: the record must be a JSON object with a 'kind' string")
    kind = record["kind"]
    params = {k: v for k, v in record.items() if k not in _EXTRA_FIELDS}
    try:
        _check_plain(record)
        fmt = None if kind == CAST_KIND else get_format(kind)
        if fmt is None:
            _check_cast(params)
        else:
            fmt.check_params(params)
        scheme = record.get("scheme", "")
        original_dtype = record.get("original_dtype")
        if not isinstance(scheme, str):
            raise ValueError(f"field 'scheme' must be a string; got {brief(scheme)}")
        if original_dtype is not None and not (isinstance(original_dtype, str) and original_dtype in FLOAT_NAMES):
            raise ValueError(f"field 'original_dtype' must be a float dtype name or null; got {brief(original_dtype)}")
        sqnr = _decode_number(record.get("sqnr_db"))
    except ValueError as exc:
        raise CorruptFileError(path, f"{where}: {exc}") from None
    return LayerEntry(name, kind, fmt, params, scheme, original_dtype, sqnr)


def _check_plain(record: Mapping[str, Any]) -> None:
    """Every field is plain JSON that writes back (fields a format does not read are kept, and
    ``as_dict`` / saving write them again): no oversized number."""
    for key, value in record.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"field {brief(key)} holds {brief(value)}, which is out of range") from None


def _check_cast(params: Mapping[str, Any]) -> None:
    if require(params, "dtype", "str") not in FLOAT_NAMES:
        raise ValueError(f"field 'dtype' must be a float dtype name; got {brief(params['dtype'])}")
    names = params.get("tensors")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"field 'tensors' must be a non-empty list of names; got {brief(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"field 'tensors' names a tensor twice: {brief(names)}")
    shape = params.get("original_shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"field 'original_shape' must be a list of integers >= 0; got {brief(shape)}")


def _json_value(text: str, what: str, path) -> Any:
    try:
        return loads_untrusted(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptFileError(path, f"the metadata {what} is not valid JSON ({exc})") from None


def _json_map(text: str, what: str, value_ok, path) -> dict:
    value = _json_value(text, f"entry {what!r}", path)
    if not isinstance(value, dict) or not all(value_ok(v) for v in value.values()):
        raise CorruptFileError(path, f"the metadata entry {what!r} must be a JSON object of valid values")
    return value


def _encode_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def _decode_number(value: Any) -> float | None:
    if value is None:
        return None
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # finite: loads_untrusted turns longer literals into Oversized*
    raise ValueError(f"field 'sqnr_db' must be a number, 'inf', '-inf' or null; got {brief(value)}")
