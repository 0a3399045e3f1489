"""``gptq_quantize``: INT4 weights chosen by GPTQ on calibration data for a whole model,
optionally with the most sensitive layers kept in INT8 within a bits-per-weight budget.

Flow: select the layers as ``dynamic_quantize(model, "int4")`` would; read the calibration
rows once; trace one forward to find which layers share an input; run passes over the data
capturing the inputs of some stages at a time (``sequential``: one stage per pass, with the
layers before it already quantized); per layer build its Hessian, run GPTQ and record it;
then, with ``max_bits_per_weight``, measure each layer's sensitivity and pick each layer's
precision (its INT4, INT4 with finer groups, INT8) within the budget. Everything runs on a working copy of the model, in eval mode under no_grad; the
caller's model is never touched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from .._calib_data import progress_bar
from .._layers import own_tensors, skipped_layer
from .._working_copy import working_copy
from ..config import QuantizationConfig
from ..info import LayerInfo, QuantizationInfo
from ..nn import QuantizedLinearInt4
from ..schemes.embedding import EMBEDDING_TYPES, EmbeddingScheme
from ..schemes.int4 import Int4Scheme
from ..selection import module_skip_reason, parameter_owners
from ..validate import validate_after_quantization
from .batches import CalibSet, collect_batches
from .alternatives import Alternative, layer_alternatives
from .gptq import gptq_linear, hessian, prepare
from .modules import Slots, parent_slots, put, swapped
from .precision import apply_plan
from .stages import LayerInputs, Stage, capture_pass, shared_groups, trace_stages, windows

# Inputs captured per pass (non-sequential): stages are grouped until their inputs reach this.
CAPTURE_BUDGET_BYTES = 512 << 20
NEVER_CALLED = "never called on the calibration data: quantized data-free (no inputs to calibrate on)"


def gptq_quantize(
    model: nn.Module,
    calib_data: Any,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **options: Any,
) -> tuple[nn.Module, QuantizationInfo]:
    """INT4-quantize a copy of ``model`` with GPTQ: each nn.Linear's rounding is chosen to keep
    its output on ``calib_data`` close to the float layer's (error feedback through the inverse
    Hessian of its inputs, act-order, static groups). The result is the ordinary INT4 format
    (``QuantizedLinearInt4``): save, load, the C kernels, the CLI and the reports work as for
    ``dynamic_quantize(model, "int4")``. The original model is never modified.

    ``calib_data``: what ``static_quantize`` takes (a DataLoader or an iterable of tensors,
    ``(input, target)`` tuples or dicts such as tokenizer outputs; an ``attention_mask`` keyword
    keeps padding out of the Hessians). ``options`` are ``QuantizationConfig`` fields:
    ``group_size``, ``symmetric``, ``scale_method``, ``num_samples`` (calibration rows, 150),
    ``damp``, ``act_order``, ``sequential``, ``max_bits_per_weight`` (give the layers whose
    INT4 error hurts the model output most finer INT4 groups or INT8, the least estimated loss
    while the average stays within it), ``sensitivity_samples``, layer selection, ``validate``... ``dtype`` must be
    "int4" (the default here). Layers INT4 cannot hold fall back to INT8 as in
    ``dynamic_quantize``; layers the data never reaches are quantized data-free.
    ``info.layers[name].sqnr_db`` of a GPTQ layer is its output SQNR on a held-back batch.

    >>> q_model, info = gptq_quantize(model, tokenized_batches, group_size=64, max_bits_per_weight=4.6)
    >>> print(info)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"gptq_quantize needs an nn.Module (it runs the model); got {type(model).__name__}")
    cfg = gptq_config(config, options)
    root = working_copy(model, "gptq_quantize")
    scheme = Int4Scheme(cfg)
    slots = parent_slots(root)
    order = [name for name, _ in root.named_modules()]
    candidates, fallbacks, records = _select(root, scheme)
    calib = collect_batches(calib_data, cfg.num_samples)
    alternatives: dict[str, list[Alternative]] = {}  # filled only with a budget
    quantized = _run_gptq(root, slots, candidates, fallbacks, calib, records, progress, scheme, alternatives)
    info = QuantizationInfo(config=cfg)
    if cfg.max_bits_per_weight is not None and quantized:
        info.precision_plan = apply_plan(root, slots, candidates, quantized, records, calib, scheme, alternatives)
    replacements = {**fallbacks, **{candidates[name]: module for name, module in quantized.items()}}
    put(slots, replacements)
    root = replacements.get(root, root)
    for name in order:
        if name in records:
            info.add(records[name])
    _finish(info, scheme, calib, bool(quantized))
    if cfg.validate:
        validate_after_quantization(model, root, info)
    return root, info


def gptq_config(config: Any, options: Mapping[str, Any]) -> QuantizationConfig:
    """The run's config (kwargs > config > file > defaults) with dtype "int4" unless given."""
    options = dict(options)
    if options.get("dtype") is None:
        options["dtype"] = "int4"
    cfg = QuantizationConfig.from_sources(config, **options)
    if cfg.dtype != "int4":
        raise ValueError(f"gptq_quantize writes INT4 weights; got dtype={cfg.dtype!r}: pass dtype='int4' "
                         "or leave it out (for INT8 use dynamic_quantize or static_quantize)")
    return cfg


def _select(root: nn.Module, scheme: Int4Scheme) -> tuple[dict[str, nn.Linear], dict[nn.Module, nn.Module], dict[str, LayerInfo]]:
    """The Linear layers GPTQ quantizes (name -> module); INT4's fallbacks, converted now (INT8,
    data-free; original -> new module); the records of every layer but the candidates."""
    owners = parameter_owners(root)
    candidates: dict[str, nn.Linear] = {}
    fallbacks: dict[nn.Module, nn.Module] = {}
    records: dict[str, LayerInfo] = {}
    # quantize_embeddings: tables become INT8 per row, data-free, as in dynamic_quantize
    tables = EmbeddingScheme(scheme.config) if scheme.config.quantize_embeddings else None
    for name, module in root.named_modules():
        tensors = own_tensors(module)
        if not tensors:
            continue
        layer_scheme = tables if tables is not None and isinstance(module, EMBEDDING_TYPES) else scheme
        reason = module_skip_reason(name, module, layer_scheme, owners)
        if reason is not None:
            records[name] = skipped_layer(name, type(module).__name__, tensors, reason)
        elif isinstance(module, nn.Linear) and QuantizedLinearInt4.supports(module, scheme.config.group_size) is None:
            candidates[name] = module
        else:
            fallbacks[module], records[name] = layer_scheme.convert_module(name, module)
    return candidates, fallbacks, records


def _run_gptq(root: nn.Module, slots: Slots, candidates: Mapping[str, nn.Linear],
              fallbacks: Mapping[nn.Module, nn.Module], calib: CalibSet, records: dict[str, LayerInfo],
              progress: bool | None, scheme: Int4Scheme,
              alternatives: dict[str, list[Alternative]]) -> dict[str, nn.Module]:
    """GPTQ every candidate the data reaches (data-free INT4 for the others); the new modules
    by name, their records added to ``records`` (with a budget, each GPTQ layer's other
    precision options in ``alternatives``). ``root`` is left with its float layers."""
    cfg = scheme.config
    if not candidates:
        return {}
    trace = trace_stages(root, calib.batches[0], candidates)
    quantized: dict[str, nn.Module] = {}
    passes = ([[stage] for stage in trace.stages] if cfg.sequential
              else windows(trace.stages, calib, calib.batches[0].rows, CAPTURE_BUDGET_BYTES))
    where = "the last calibration batch" if calib.holdout_is_calibration else "a held-back batch"
    with progress_bar(calib.rows * len(passes), progress, desc="GPTQ") as bar:
        for stages in passes:
            layers = {name: candidates[name] for stage in stages for name in stage.layers}
            # sequential: the layers before this stage run quantized (fallbacks from the start)
            done = {**fallbacks, **{candidates[n]: m for n, m in quantized.items()}} if cfg.sequential else {}
            with swapped(slots, done):
                inputs = capture_pass(root, layers, calib, trace.stop_early, bar.update)
            for stage in stages:
                _quantize_stage(stage, inputs, candidates, scheme, where, quantized, records, alternatives)
    for name in trace.never_called:
        quantized[name], record = scheme.convert_module(name, candidates[name])
        records[name] = dataclasses.replace(record, details={**record.details, "method": "data-free", "gptq": NEVER_CALLED})
    return quantized


def _quantize_stage(stage: Stage, inputs: dict[str, LayerInputs], candidates: Mapping[str, nn.Linear],
                    scheme: Int4Scheme, where: str, quantized: dict[str, nn.Module],
                    records: dict[str, LayerInfo], alternatives: dict[str, list[Alternative]]) -> None:
    """GPTQ the layers of one stage, one Hessian at a time (layers that saw the same inputs
    share one; the previous Hessian is dropped before the next is built); with a budget, also
    each layer's other precision options while the Hessian is there. The stage's captured
    inputs are dropped once it is done."""
    cfg = scheme.config
    for group in shared_groups(stage, inputs):
        h, rows = hessian(inputs[group[0]].chunks, candidates[group[0]].in_features)
        prepared = prepare(h, rows, cfg, group[0])
        kept = h if cfg.max_bits_per_weight is not None else None  # the options' errors need it
        del h
        for name in group:
            quantized[name], records[name] = gptq_linear(
                name, candidates[name], prepared, inputs[name].holdout, cfg, where)
            if kept is not None:
                alternatives[name] = layer_alternatives(name, candidates[name], (quantized[name], records[name]),
                                                        prepared, kept, inputs[name].holdout, scheme, where)
        del kept, prepared
    for name in stage.layers:
        inputs.pop(name, None)


def _finish(info: QuantizationInfo, scheme: Int4Scheme, calib: CalibSet, calibrated: bool) -> None:
    """Run-level warnings: the group size's fallbacks, a budget below all-INT4, a held-back
    batch that had to be a calibration batch."""
    scheme.finish(info)
    plan = info.precision_plan
    if plan is not None and plan.all_int4 > plan.budget:
        info.warnings.append(
            f"max_bits_per_weight={plan.budget:g} is below the {plan.all_int4:.3f} bits per weight the "
            f"model stores with every layer in INT4 (scales, zero points and INT8 fallbacks included): "
            f"no layer was kept in INT8; raise the budget or use a larger group_size")
    if calib.holdout_is_calibration and calibrated:
        info.warnings.append(
            "calib_data ran out before a batch could be held back: output SQNRs were measured on the "
            "last calibration batch; pass more than num_samples samples for an unseen batch")
