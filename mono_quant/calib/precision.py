"""Applying the mixed precision plan to a GPTQ run: measure every INT4 layer's sensitivity,
estimate its other options' (finer INT4 groups, INT8) from their layer output errors, plan
within ``max_bits_per_weight``, and swap in the chosen modules with records that say why."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from torch import nn

from .._layers import int8_bits_per_weight
from ..info import LayerInfo
from ..nn import QuantizedLinearInt4
from ..schemes.int4 import Int4Scheme
from .alternatives import Alternative
from .batches import CalibSet
from .modules import Slots
from .sensitivity import LayerChoice, PrecisionOption, PrecisionPlan, measure_sensitivity, plan_precision


def apply_plan(
    root: nn.Module, slots: Slots, floats: Mapping[str, nn.Module], quantized: dict[str, nn.Module],
    records: dict[str, LayerInfo], calib: CalibSet, scheme: Int4Scheme,
    alternatives: Mapping[str, Sequence[Alternative]],
) -> PrecisionPlan:
    """Plan the run's precision and update ``quantized`` / ``records`` in place: each layer
    gets the module of its chosen option; every candidate's record gets its sensitivity and
    choice. Layers without ``alternatives`` (quantized data-free) choose between INT4 and INT8.

    >>> plan = apply_plan(root, parent_slots(root), candidates, quantized, records, calib, scheme, alternatives)
    """
    cfg = scheme.config
    int4 = {name: m for name, m in quantized.items() if isinstance(m, QuantizedLinearInt4)}
    batches = calib.first_rows(cfg.sensitivity_samples)
    sensitivity = measure_sensitivity(root, slots, floats, int4, batches)
    choices = [_choice(name, records[name], sensitivity[name], alternatives.get(name, ())) for name in int4]
    fixed = [r for name, r in records.items() if r.quantized and name not in int4]
    fixed_weights = sum(math.prod(r.shape) for r in fixed)
    fixed_bits = sum(r.details.get("bits_per_weight", 8.0 * r.bytes_after / max(math.prod(r.shape), 1))
                     * math.prod(r.shape) for r in fixed)
    plan = plan_precision(choices, fixed_bits, fixed_weights, cfg.max_bits_per_weight, sum(b.rows for b in batches))
    for name, choice in plan.layers.items():
        note = {"sensitivity": choice.sensitivity, "precision_rank": choice.rank, "precision": choice.choice}
        option = next((a for a in alternatives.get(name, ())
                       if a.precision == choice.choice and a.group_size == choice.group_size), None)
        if choice.choice == "int8" and option is None:
            option = Alternative("int8", None, choice.bits, 0.0,
                                 *scheme.int8_scheme.convert_module(name, floats[name]))
        if choice.choice == "int4" and choice.group_size in (None, cfg.group_size):  # the run's INT4
            records[name] = dataclasses.replace(records[name], details={**records[name].details, **note})
            continue
        if option is None:  # the planner only picks options it was given
            raise RuntimeError(f"mixed precision: no {choice.label} version of layer {name!r} was made")
        quantized[name] = option.module
        records[name] = dataclasses.replace(option.record, scheme=f"{option.record.scheme} (mixed precision)",
                                            details={**option.record.details, **note})
    return plan


def _choice(name: str, record: LayerInfo, sensitivity: float, options: Sequence[Alternative]) -> LayerChoice:
    """The planner's view of one layer: the run's INT4 at its measured ``sensitivity``; each
    other option at that times its output error relative to the run's INT4 one."""
    weights = math.prod(record.shape)
    int8_bits = int8_bits_per_weight(tuple(record.shape), True)
    choice = LayerChoice(name, weights, sensitivity, record.details["bits_per_weight"], int8_bits)
    if not options:
        return choice
    base = options[0].error
    scaled = tuple(PrecisionOption(a.precision, a.group_size, a.bits,
                                   sensitivity * (a.error / base if base > 0 else 0.0)) for a in options)
    return dataclasses.replace(choice, options=scaled)
