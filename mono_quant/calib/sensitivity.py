"""Mixed precision by measured sensitivity.

A layer's *sensitivity* is how far the model's output moves when that layer alone is
quantized (to its INT4 version) and every other layer stays float: the relative squared error
``sum (y - y0)^2 / sum y0^2`` of each floating output tensor over the calibration rows (padding
rows left out when the batch has an ``attention_mask``), averaged over the output tensors.

The plan for a budget of ``max_bits_per_weight`` starts from every candidate layer in INT4 at
the run's group size. Each layer has *options*, each with its bits per weight and its loss
(sensitivity): the run's INT4 (measured), INT4 with finer groups and INT8 (estimated by
``gptq_quantize`` as the measured sensitivity times the ratio of the option's layer output
error to the run's INT4 one, on the calibration rows). Taking the losses as additive, the
planner picks one option per layer with the least summed loss whose bits fit the budget (an
exact knapsack search over the budget cut into fine units; a greedy order by loss per bit can
miss the best plan when one large upgrade crowds out two small ones). Each layer's *rank* is by
the most loss it can remove per extra bit. A layer with only the two classic options (INT4, and
INT8 at loss 0) is the simple case: the budget goes to the layers whose INT8 removes the most.
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
class PrecisionOption:
    """One way to store a layer: "int4" with ``group_size`` or "int8" (``group_size`` None),
    its bits per weight and its loss (the sensitivity it would have; see the module docstring).

    >>> PrecisionOption("int4", 32, 4.75, 0.0012).label
    'int4 g32'
    """

    precision: str
    group_size: int | None
    bits: float
    loss: float

    @property
    def label(self) -> str:
        return self.precision if self.group_size is None else f"{self.precision} g{self.group_size}"


@dataclass(frozen=True)
class LayerChoice:
    """One candidate layer of the plan: its weight count, sensitivity (see the module
    docstring), bits per weight as INT4 (the run's group size) and as INT8, the ``options``
    the planner may pick from (empty: INT4 at ``sensitivity`` and INT8 at loss 0), and the
    choice made: ``choice`` ("int4"/"int8"), ``group_size`` (INT4's) and ``bits``, with the
    layer's ``rank`` by loss removed per extra bit of its first upgrade (1 = the most).

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
    options: tuple[PrecisionOption, ...] = ()
    group_size: int | None = None
    bits: float = 0.0

    @property
    def loss_per_saved_bit(self) -> float:
        """Sensitivity per bit that INT4 saves over INT8 on this layer."""
        saved = (self.int8_bits - self.int4_bits) * self.weights
        return self.sensitivity / saved if saved > 0 else math.inf

    @property
    def label(self) -> str:
        """The choice as the table shows it: "int8", or "int4" with its group size when known."""
        return self.choice if self.group_size is None else f"{self.choice} g{self.group_size}"

    def all_options(self) -> tuple[PrecisionOption, ...]:
        """The options, cheapest first (the classic pair when none were given)."""
        options = self.options or (PrecisionOption("int4", None, self.int4_bits, self.sensitivity),
                                   PrecisionOption("int8", None, self.int8_bits, 0.0))
        return tuple(sorted(options, key=lambda o: o.bits))


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
             str(c.rank), c.label.upper())
            for c in self.layers.values()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"Mixed precision (max_bits_per_weight={self.budget:g}): sensitivity = relative output error "
                 f"with the layer alone in INT4, on {self.rows} calibration rows"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        kept = self.int8_layers
        finer = [c for c in self.layers.values() if c.choice == "int4" and c.bits > c.int4_bits]
        more = f", {len(finer)} in INT4 with finer groups" if finer else ""
        lines.append(f"{len(kept)} layer(s) kept in INT8{more}: {self.bits_per_weight:.3f} bits per weight "
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
    """Pick each candidate's option (see the module docstring) so that the summed loss is the
    least possible while the average over all quantized layers (the candidates plus
    ``fixed_weights`` storing ``fixed_bits`` bits in all) stays within ``budget`` bits per weight.

    >>> plan = plan_precision([LayerChoice("fc1", 4096, 0.02, 4.19, 8.25)], 0.0, 0, 4.6, 32)
    """
    total = fixed_weights + sum(c.weights for c in candidates)
    frontiers = [_frontier(c) for c in candidates]
    bits = fixed_bits + sum(f[0].bits * c.weights for f, c in zip(frontiers, candidates))
    all_int4 = bits / total if total else 0.0
    picks = _least_loss(candidates, frontiers, budget * total - bits)
    first = [_first_slope(f, c.weights) for f, c in zip(frontiers, candidates)]
    order = sorted(range(len(candidates)), key=lambda i: -first[i])
    ranks = {candidates[i].name: r + 1 for r, i in enumerate(order)}
    layers = {}
    for c, frontier, pick in zip(candidates, frontiers, picks):
        option = frontier[pick]
        bits += (option.bits - frontier[0].bits) * c.weights
        group = option.group_size if option.precision == "int4" else None
        layers[c.name] = dataclasses.replace(c, choice=option.precision, group_size=group, bits=option.bits,
                                             rank=ranks[c.name])
    return PrecisionPlan(budget, all_int4, bits / total if total else 0.0, layers, rows)


# The budget left above the cheapest options is cut into this many units for the search; each
# option's extra bits are rounded up to whole units, so a plan never exceeds the budget.
PLAN_UNITS = 4096


def _frontier(choice: LayerChoice) -> list[PrecisionOption]:
    """The options worth paying for, cheapest first: each has a lower loss than every cheaper
    one (an option that costs more and loses as much or more is never a better buy)."""
    out: list[PrecisionOption] = []
    for option in choice.all_options():
        if not out or option.loss < out[-1].loss:
            out.append(option)
    return out


def _first_slope(frontier: Sequence[PrecisionOption], weights: int) -> float:
    """The largest loss removed per extra bit from the cheapest option (0: no upgrade helps)."""
    base = frontier[0]
    return max(((base.loss - o.loss) / ((o.bits - base.bits) * max(weights, 1)) for o in frontier[1:]),
               default=0.0)


def _least_loss(candidates: Sequence[LayerChoice], frontiers: Sequence[Sequence[PrecisionOption]],
                room: float) -> list[int]:
    """Index into each frontier of the choice with the least summed loss whose extra bits fit
    in ``room`` (a knapsack with one choice per layer, solved exactly on ``PLAN_UNITS`` units;
    among plans of equal loss the cheaper options win)."""
    picks = [0] * len(candidates)
    if room <= 0 or not candidates:
        return picks
    unit = room / PLAN_UNITS
    best = torch.zeros(PLAN_UNITS + 1, dtype=torch.float64)  # least loss within c units
    choices = []
    for c, frontier in zip(candidates, frontiers):
        costs = [math.ceil((o.bits - frontier[0].bits) * c.weights / unit - 1e-9) for o in frontier]
        table = torch.full((len(frontier), PLAN_UNITS + 1), math.inf, dtype=torch.float64)
        for i, (o, cost) in enumerate(zip(frontier, costs)):
            if cost <= PLAN_UNITS:
                table[i, cost:] = best[:PLAN_UNITS + 1 - cost] + o.loss
        best, pick = table.min(dim=0)  # ties: the first (cheapest) option
        choices.append((pick, costs))
    left = PLAN_UNITS
    for i in range(len(candidates) - 1, -1, -1):
        pick, costs = choices[i]
        picks[i] = int(pick[left])
        left -= costs[picks[i]]
    return picks
