"""Mixed precision by measured sensitivity.

A layer's *sensitivity* is how far the model's output moves when that layer alone is
quantized (to its INT4 version) and every other layer stays float: the relative squared error
``sum (y - y0)^2 / sum y0^2`` of each floating output tensor over the calibration rows (padding
rows left out when the batch has an ``attention_mask``), averaged over the output tensors.

The plan for a budget of ``max_bits_per_weight`` starts from every candidate layer in INT4
and keeps in INT8 the layers with the largest sensitivity per bit that INT4 saves on them,
in that order, each one that still fits the budget. INT8's own error is left out of the
sum: at ~48 dB against INT4's ~20 dB per layer it is a few thousandths of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._calib_data import Batch
from .._working_copy import inference
from .batches import output_tensors, token_mask
from .modules import Slots, swapped


@dataclass(frozen=True)
class LayerChoice:
    """One candidate layer of the plan: its weight count, sensitivity (see the module
    docstring), bits per weight as INT4 and as INT8, and the ``choice`` made ("int4"/"int8")
    with its ``rank`` by loss per saved bit (1 = the worst).

    >>> info.precision_plan.layers["encoder.layer.5.output.dense"].choice
    'int8'
    """

    name: str
    weights: int
    sensitivity: float
    int4_bits: float
    int8_bits: float
    choice: str = "int4"
    rank: int = 0

    @property
    def loss_per_saved_bit(self) -> float:
        """Sensitivity per bit that INT4 saves over INT8 on this layer."""
        saved = (self.int8_bits - self.int4_bits) * self.weights
        return self.sensitivity / saved if saved > 0 else math.inf


@dataclass
class PrecisionPlan:
    """The mixed precision plan of a ``gptq_quantize`` run with ``max_bits_per_weight``:
    ``budget``, the bits per weight every quantized layer in INT4 would store (``all_int4``),
    what the plan stores (``bits_per_weight``), each candidate's ``LayerChoice``, and the
    calibration rows the sensitivities were measured on. ``print(plan)`` shows the table.

    >>> q_model, info = gptq_quantize(model, data, max_bits_per_weight=4.6)
    >>> print(info.precision_plan)
    """

    budget: float
    all_int4: float
    bits_per_weight: float
    layers: dict[str, LayerChoice]
    rows: int

    @property
    def int8_layers(self) -> list[str]:
        return [name for name, c in self.layers.items() if c.choice == "int8"]

    def __str__(self) -> str:
        header = ("Layer", "Weights", "Sensitivity", "Per saved bit", "Rank", "Choice")
        rows = [header] + [
            (c.name or "(root)", str(c.weights), f"{c.sensitivity:.3e}", f"{c.loss_per_saved_bit:.3e}",
             str(c.rank), c.choice.upper())
            for c in self.layers.values()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"Mixed precision (max_bits_per_weight={self.budget:g}): sensitivity = relative output error "
                 f"with the layer alone in INT4, on {self.rows} calibration rows"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        kept = self.int8_layers
        lines.append(f"{len(kept)} layer(s) kept in INT8: {self.bits_per_weight:.3f} bits per weight "
                     f"(all INT4: {self.all_int4:.3f}; budget {self.budget:g})")
        return "\n".join(lines)


def measure_sensitivity(
    root: nn.Module, slots: Slots, floats: Mapping[str, nn.Module], quantized: Mapping[str, nn.Module],
    batches: Sequence[Batch],
) -> dict[str, float]:
    """Each layer's sensitivity: ``root`` (float) on ``batches`` with ``quantized[name]`` in
    place of ``floats[name]``, against ``root`` as it is.

    >>> measure_sensitivity(model, parent_slots(model), {"fc1": model.fc1}, {"fc1": q_fc1}, batches)
    {'fc1': 0.0021}
    """
    with inference(root):
        reference = [_outputs(root, batch) for batch in batches]
        result = {}
        for name, module in quantized.items():
            with swapped(slots, {floats[name]: module}):
                result[name] = _relative_error(reference, [_outputs(root, batch) for batch in batches])
    return result


def _outputs(root: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """The floating output tensors of one batch, padding rows removed where a mask applies."""
    out = []
    for t in output_tensors(batch.run(root)):
        mask = token_mask(batch, t) if t.dim() >= 2 else None
        out.append((t.reshape(-1, t.shape[-1])[mask] if mask is not None else t).float())
    return out


def _relative_error(reference: list[list[torch.Tensor]], other: list[list[torch.Tensor]]) -> float:
    """Mean over output tensors of sum (y - y0)^2 / sum y0^2 over all batches (inf if not finite)."""
    count = min(len(r) for r in reference) if reference else 0
    errors = []
    for i in range(count):
        num = sum(float((o[i] - r[i]).double().pow(2).sum()) for r, o in zip(reference, other))
        den = sum(float(r[i].double().pow(2).sum()) for r in reference)
        if den > 0:
            errors.append(num / den if math.isfinite(num) else math.inf)
    return sum(errors) / len(errors) if errors else 0.0


def plan_precision(
    candidates: Sequence[LayerChoice], fixed_bits: float, fixed_weights: int, budget: float, rows: int,
) -> PrecisionPlan:
    """Keep the candidates with the largest loss per saved bit in INT8 while the average over
    all quantized layers (the candidates plus ``fixed_weights`` storing ``fixed_bits`` bits in
    all) stays within ``budget`` bits per weight.

    >>> plan = plan_precision([LayerChoice("fc1", 4096, 0.02, 4.19, 8.25)], 0.0, 0, 4.6, 32)
    """
    total = fixed_weights + sum(c.weights for c in candidates)
    bits = fixed_bits + sum(c.int4_bits * c.weights for c in candidates)
    all_int4 = bits / total if total else 0.0
    order = sorted(candidates, key=lambda c: c.loss_per_saved_bit, reverse=True)
    ranks = {c.name: i + 1 for i, c in enumerate(order)}
    kept: set[str] = set()
    for c in order:
        extra = (c.int8_bits - c.int4_bits) * c.weights
        if c.sensitivity > 0 and bits + extra <= budget * total:
            bits += extra
            kept.add(c.name)
    layers = {c.name: dataclasses.replace(c, choice="int8" if c.name in kept else "int4", rank=ranks[c.name])
              for c in candidates}
    return PrecisionPlan(budget, all_int4, bits / total if total else 0.0, layers, rows)
