"""Applying the mixed precision plan to a GPTQ run: measure every INT4 layer's sensitivity,
plan within ``max_bits_per_weight``, and swap the kept layers for INT8 ones (data-free, per
channel) with records that say why."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from torch import nn

from .._layers import int8_bits_per_weight
from ..info import LayerInfo
from ..nn import QuantizedLinearInt4
from ..schemes.int4 import Int4Scheme
from .batches import CalibSet
from .modules import Slots
from .sensitivity import LayerChoice, PrecisionPlan, measure_sensitivity, plan_precision


def apply_plan(
    root: nn.Module, slots: Slots, floats: Mapping[str, nn.Module], quantized: dict[str, nn.Module],
    records: dict[str, LayerInfo], calib: CalibSet, scheme: Int4Scheme,
) -> PrecisionPlan:
    """Plan the run's precision and update ``quantized`` / ``records`` in place: the layers
    kept in INT8 get INT8 modules; every candidate's record gets its sensitivity and choice.

    >>> plan = apply_plan(root, parent_slots(root), candidates, quantized, records, calib, scheme)
    """
    cfg = scheme.config
    int4 = {name: m for name, m in quantized.items() if isinstance(m, QuantizedLinearInt4)}
    batches = calib.first_rows(cfg.sensitivity_samples)
    sensitivity = measure_sensitivity(root, slots, floats, int4, batches)
    choices = [LayerChoice(name, math.prod(records[name].shape), sensitivity[name],
                           records[name].details["bits_per_weight"],
                           int8_bits_per_weight(tuple(records[name].shape), True)) for name in int4]
    fixed = [r for name, r in records.items() if r.quantized and name not in int4]
    fixed_weights = sum(math.prod(r.shape) for r in fixed)
    fixed_bits = sum(r.details.get("bits_per_weight", 8.0 * r.bytes_after / max(math.prod(r.shape), 1))
                     * math.prod(r.shape) for r in fixed)
    plan = plan_precision(choices, fixed_bits, fixed_weights, cfg.max_bits_per_weight, sum(b.rows for b in batches))
    for name, choice in plan.layers.items():
        note = {"sensitivity": choice.sensitivity, "precision_rank": choice.rank, "precision": choice.choice}
        if choice.choice == "int8":
            quantized[name], record = scheme.int8_scheme.convert_module(name, floats[name])
            records[name] = dataclasses.replace(
                record, scheme=f"{record.scheme} (mixed precision)", details={**record.details, **note})
        else:
            records[name] = dataclasses.replace(records[name], details={**records[name].details, **note})
    return plan
