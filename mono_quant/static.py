"""``static_quantize``: INT8 weights and calibrated INT8 inputs for Linear and Conv2d layers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import _kernels as K
from ._calib_data import Batch
from ._integrations import after_quantization
from ._layer_schemes import add_pattern_warnings, check_not_meta
from ._layers import own_tensors, skipped_layer
from ._working_copy import inference, working_copy
from .calibration import (
    CalibrationStats,
    forward_hooks,
    layer_input,
    run_calibration,
    select_layers,
    static_config,
)
from .config import QuantizationConfig
from .errors import PartialConversionError
from .info import LayerInfo, QuantizationInfo
from .schemes.embedding import EMBEDDING_TYPES, EmbeddingScheme
from .schemes.static_int8 import StaticInt8Scheme


def static_quantize(
    model: nn.Module,
    calib_data: Any,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    inplace: bool = False,
    **options: Any,
) -> tuple[nn.Module, QuantizationInfo]:
    """Statically quantize a copy of ``model``: nn.Linear and nn.Conv2d get INT8 weights (per
    output channel) and INT8 inputs with a scale and zero point calibrated on ``calib_data``.
    The original model is never modified, also when calibration fails, unless ``inplace=True``:
    then ``model`` itself is calibrated (hooks are removed, training flags restored) and
    converted without a copy. In place, layers are swapped one by one, each float layer
    released once replaced, when no output SQNR is measured (``compute_sqnr=False`` or
    ``CalibrationStats`` passed); otherwise all quantized layers are built first, as the SQNR
    check runs float and quantized layers side by side. A failure while converting raises a
    ``PartialConversionError`` naming the layers already swapped (discard the model).

    ``calib_data``: a DataLoader or any iterable of batches (tensors, ``(input, target)``
    tuples, dicts of keyword arguments), one tensor / dict, or the ``CalibrationStats`` of an
    earlier ``calibrate(model, ...)``. ``options`` are the fields of ``QuantizationConfig``
    (``observer``, ``num_samples``, ``percentile``, ``momentum``, ``activation_symmetric``,
    layer selection, ...); they override ``config``, which overrides the config file, which
    overrides the defaults. ``progress``: None shows a bar for more than 50 samples.
    ``info`` records per layer the input range, scale and zero point, weight scales and the
    SQNR of the layer's output on a held-back batch.

    >>> q_model, info = static_quantize(model, loader, observer="percentile")
    >>> print(info)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"static_quantize needs an nn.Module (it runs the model); got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False; got {inplace!r}")
    cfg = static_config(config, options)
    check_not_meta(model, "static_quantize")
    root = model if inplace else working_copy(model, "static_quantize")
    layers, skipped = select_layers(root, cfg, tables=cfg.quantize_embeddings)
    # Tables (quantize_embeddings) take integer indices: nothing to calibrate, converted as is.
    tables = {name: layers.pop(name) for name in [n for n, m in layers.items() if isinstance(m, EMBEDDING_TYPES)]}
    if isinstance(calib_data, CalibrationStats):
        stats = calib_data
    else:
        stats = run_calibration(root, calib_data, layers, cfg, progress, skipped)
    scheme = StaticInt8Scheme(cfg, stats)
    names = [name for name in layers if name in stats.layers]
    if inplace and not (cfg.compute_sqnr and stats.holdout is not None):
        root, records = _swap_one_by_one(root, names, layers, scheme)
        root, table_records = _swap_one_by_one(root, list(tables), tables, EmbeddingScheme(cfg))
        info = _report(root, cfg, {**layers, **tables}, skipped, {**records, **table_records}, stats)
        after_quantization(root, info)
        return root, info
    converted = {name: scheme.convert_module(name, layers[name]) for name in names}
    if cfg.compute_sqnr and stats.holdout is not None:
        sqnr = output_sqnr(root, {name: (layers[name], new) for name, (new, _) in converted.items()}, stats.holdout)
        converted = {name: (new, _with_output_sqnr(record, sqnr.get(name), stats))
                     for name, (new, record) in converted.items()}
    table_scheme = EmbeddingScheme(cfg)
    converted.update((name, table_scheme.convert_module(name, module)) for name, module in tables.items())
    info = _report(root, cfg, {**layers, **tables}, skipped,
                   {name: record for name, (_, record) in converted.items()}, stats)
    root = _swap(root, {name: new for name, (new, _) in converted.items()})
    after_quantization(root, info)
    return root, info


def _swap_one_by_one(root: nn.Module, names: list[str], layers: dict[str, nn.Module],
                     scheme: StaticInt8Scheme | EmbeddingScheme) -> tuple[nn.Module, dict[str, LayerInfo]]:
    """Convert and swap each layer in turn (in place): the float layer leaves ``layers`` and
    the model as soon as its replacement is in, so only one layer is held twice."""
    records: dict[str, LayerInfo] = {}
    for name in names:
        try:
            new, records[name] = scheme.convert_module(name, layers.pop(name))
            root = _swap(root, {name: new})
        except Exception as exc:
            raise PartialConversionError(name, list(records)[:-1] if name in records else list(records), exc) from exc
        del new
    return root, records


def output_sqnr(
    root: nn.Module, pairs: Mapping[str, tuple[nn.Module, nn.Module]], batch: Batch
) -> dict[str, float]:
    """SQNR (dB) of each quantized layer's output against its float layer's output, both on
    the input the float layer receives when ``root`` runs on ``batch`` (first call only).

    >>> output_sqnr(model, {"fc1": (model.fc1, q_fc1)}, stats.holdout)
    {'fc1': 38.2}
    """
    results: dict[str, float] = {}

    def make_hook(name: str, quantized: nn.Module):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if name not in results and isinstance(output, torch.Tensor):
                approx = quantized(layer_input(name, args, kwargs))
                results[name] = K.sqnr(output.detach().float(), approx.float())
        return hook

    hooks = [(float_layer, make_hook(name, quantized)) for name, (float_layer, quantized) in pairs.items()]
    with inference(root), forward_hooks(hooks, pre=False):
        batch.run(root)
    return results


def _report(
    root: nn.Module,
    cfg: QuantizationConfig,
    layers: Mapping[str, nn.Module],
    skipped: Mapping[str, str],
    records: Mapping[str, LayerInfo],
    stats: CalibrationStats,
) -> QuantizationInfo:
    """Every considered layer in model order: converted, uncalibrated or skipped."""
    info = QuantizationInfo(config=cfg)
    add_pattern_warnings(info, (name for name, _ in root.named_modules()), cfg)
    for name, module in root.named_modules():
        if name in records:
            info.add(records[name])
        elif name in layers or name in skipped:
            reason = skipped[name] if name in skipped else _uncalibrated(name, stats)
            info.add(skipped_layer(name, type(module).__name__, own_tensors(module), reason))
    if stats.holdout_is_calibration and records:
        info.warnings.append(
            "calib_data ran out before a batch could be held back: output SQNRs were measured on "
            "the last calibration batch; pass more than num_samples samples for an unseen batch"
        )
    return info


def _with_output_sqnr(record: LayerInfo, sqnr: float | None, stats: CalibrationStats) -> LayerInfo:
    where = "the last calibration batch" if stats.holdout_is_calibration else "a held-back batch"
    details = {**record.details, "output_sqnr_db": sqnr, "sqnr_measured_on": where}
    return dataclasses.replace(record, sqnr_db=sqnr, details=details)


def _uncalibrated(name: str, stats: CalibrationStats) -> str:
    if name in stats.never_called:
        return "never called during calibration, so its inputs have no range; it stays float"
    return "has no range in the CalibrationStats passed (calibrated with other options?); it stays float"


def _swap(root: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """Put each replacement where its layer was (every parent slot of a shared layer)."""
    by_id = {id(root.get_submodule(name)): new for name, new in replacements.items()}
    for parent in list(root.modules()):
        for attr, child in list(parent._modules.items()):
            if child is not None and id(child) in by_id:
                parent._modules[attr] = by_id[id(child)]
    return by_id.get(id(root), root)
