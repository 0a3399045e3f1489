"""The ``quantization_config`` entry of a transformers ``config.json``, without transformers.

``quantize_checkpoint`` writes it next to a sharded output and ``dynamic_quantize`` attaches it
to a transformers model; ``mono_quant.integrations.transformers`` reads it back. It holds:

  quant_method        "mono_quant"
  format_version      1
  mono_quant_version  the version that wrote it
  layout              "module" (tensors named ``fc.qweight``, ``fc.scale``, ...: what
                      ``save_pretrained`` writes) or "state_dict" (``fc.weight``,
                      ``fc.weight_scale``, ...: what ``quantize_checkpoint`` writes)
  dtype, ...          the run's options (those a file can hold: not ``filter_fn``)
  layers              {layer name: the record a mono_quant file keeps for it (kind, shapes,
                      format fields, scheme, SQNR)}: what loading builds, layer by layer
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from .._file_metadata import LayerEntry, layer_entry, parse_layer_record
from ..config import QuantizationConfig
from ..formats import format_for_module

QUANT_METHOD = "mono_quant"
FORMAT_VERSION = 1
LAYOUTS = ("module", "state_dict")
# Options written to config.json: how layers are chosen and quantized (not run-time switches).
SAVED_OPTIONS = ("dtype", "symmetric", "per_channel", "group_size", "scale_method", "modules_to_not_convert",
                 "layer_types", "skip_types", "layer_names", "skip_names", "min_params", "layer_config",
                 "quantize_embeddings")
_RESERVED = ("quant_method", "format_version", "mono_quant_version", "layout", "layers")


def options_of(config: QuantizationConfig) -> dict[str, Any]:
    """The JSON-able options of ``config`` that config.json keeps (classes become names).

    >>> options_of(QuantizationConfig(dtype="int4"))["group_size"]
    128
    """
    out: dict[str, Any] = {}
    for name in SAVED_OPTIONS:
        value = getattr(config, name)
        if name in ("layer_types", "skip_types"):
            value = [v if isinstance(v, str) else f"{v.__module__}.{v.__qualname__}" for v in value]
        elif name == "layer_config":
            value = {pattern: dict(overrides) for pattern, overrides in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def config_dict(config: QuantizationConfig, layers: Mapping[str, LayerEntry], layout: str) -> dict[str, Any]:
    """The ``quantization_config`` dict for ``config.json``.

    >>> config_dict(cfg, layers_of_model(q_model), "module")["quant_method"]
    'mono_quant'
    """
    from .. import __version__

    return {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "mono_quant_version": __version__,
        "layout": layout,
        **options_of(config),
        "layers": {name: json.loads(entry.to_json()) for name, entry in layers.items()},
    }


def layers_of_model(model: nn.Module, info=None) -> dict[str, LayerEntry]:
    """The record of every quantized module of ``model`` (``info``, the run's report, adds
    schemes and SQNRs).

    >>> list(layers_of_model(q_model))[:1]
    ['encoder.layer.0.attention.self.query']
    """
    records = {} if info is None else info.layers
    out = {}
    for name, module in model.named_modules():
        fmt = format_for_module(module)
        if fmt is not None:
            out[name] = layer_entry(name, fmt, fmt.params(module), records.get(name))
    return out


def parse_layers(records: Any, where: str) -> dict[str, LayerEntry]:
    """The ``layers`` of a quantization_config, checked like a file's layer records (a
    ``CorruptFileError`` naming ``where`` otherwise); "cast" records are not accepted."""
    if not isinstance(records, Mapping):
        raise ValueError(f"{where}: 'layers' must map layer names to records; got {type(records).__name__}")
    out = {}
    for name, record in records.items():
        entry = parse_layer_record(str(name), record, where)
        if entry.fmt is None:
            raise ValueError(f"{where}: layer {name!r} is a {entry.kind!r} record; transformers checkpoints hold "
                             "quantized layers only (save float16 models with save_pretrained directly)")
        out[str(name)] = entry
    return out


def split_config_dict(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(reserved fields, options)`` of a quantization_config dict."""
    reserved = {k: v for k, v in values.items() if k in _RESERVED}
    options = {k: v for k, v in values.items() if k not in _RESERVED}
    return reserved, options
