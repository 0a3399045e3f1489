"""Which layers see which inputs, and the passes over the calibration data that capture them.

A *stage* is a set of layers that receive the same input tensor in one forward (a transformer's
query, key and value projections), so they share one Hessian. ``trace_stages`` runs the first
batch once to find the stages in the order the model calls them. ``capture_pass`` then runs
every batch with hooks on the layers of some stages and keeps each layer's inputs (a copy of
the 2-D input and its padding mask; layers of a stage that got the very same tensor share the
copy); the Hessians are built from them one at a time afterwards, so only one layer's Hessian
is ever in memory. Once every watched layer has run on a batch the forward is stopped (the
rest of the model cannot change what was captured), unless some layer runs more than once per
forward. Hooks are removed and training flags restored whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._calib_data import Batch
from .._working_copy import inference
from ..calibration import forward_hooks, layer_input
from .batches import CalibSet, token_mask


@dataclass
class Stage:
    """Layers (names, in call order) that got the same input tensor in the traced forward;
    ``input_bytes`` is that input's size on the traced batch."""

    layers: list[str]
    input_bytes: int = 0


@dataclass
class Trace:
    """What one forward of the first batch showed: the stages in call order, the selected
    layers it never called, and whether every called layer ran exactly once (the condition for
    stopping a forward early)."""

    stages: list[Stage]
    never_called: list[str]
    stop_early: bool


@dataclass
class Chunk:
    """One call's input of a layer: ``x`` [rows, in_features] (a copy) and the rows to count."""

    x: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class LayerInputs:
    """The inputs one layer saw in a pass: on the calibration batches and on the held-back one."""

    chunks: list[Chunk] = field(default_factory=list)
    holdout: list[Chunk] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(int(c.mask.sum()) if c.mask is not None else c.x.shape[0] for c in self.chunks)


class _StopForward(Exception):
    """Raised by a hook once every watched layer has run on the current batch."""


def trace_stages(root: nn.Module, batch: Batch, layers: Mapping[str, nn.Module]) -> Trace:
    """Run ``batch`` once through ``root`` and group ``layers`` by the input tensor they get.

    >>> trace = trace_stages(model, calib.batches[0], {"q": model.q, "k": model.k, "o": model.o})
    >>> [s.layers for s in trace.stages]
    [['q', 'k'], ['o']]
    """
    calls: list[tuple[str, Any, torch.Tensor]] = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = layer_input(name, args, kwargs)
            calls.append((name, _raw_input(args, kwargs), x))
        return hook

    with inference(root), forward_hooks([(m, make_hook(n)) for n, m in layers.items()], pre=True):
        batch.run(root)
    stages: list[Stage] = []
    inputs: list[Any] = []
    placed: set[str] = set()
    for name, raw, x in calls:
        if name in placed:
            continue
        placed.add(name)
        same = next((i for i, seen in enumerate(inputs) if seen is raw), None)
        if same is None:
            inputs.append(raw)
            stages.append(Stage([name], x.numel() * x.element_size()))
        else:
            stages[same].layers.append(name)
    counts = [name for name, _, _ in calls]
    return Trace(stages, [n for n in layers if n not in placed], len(counts) == len(set(counts)))


def capture_pass(
    root: nn.Module,
    layers: Mapping[str, nn.Module],
    calib: CalibSet,
    stop_early: bool,
    advance: Callable[[int], Any],
) -> dict[str, LayerInputs]:
    """Run every calibration batch, then the held-back one, through ``root`` and return the
    inputs each of ``layers`` saw."""
    watch = _Watch(list(layers))
    pairs = [(module, watch.hook(name)) for name, module in layers.items()]
    with inference(root), forward_hooks(pairs, pre=True):
        for batch in calib.batches:
            watch.run(root, batch, stop_early, holdout=False)
            advance(batch.rows)
        watch.run(root, calib.holdout, stop_early, holdout=True)
    return watch.inputs


class _Watch:
    """The hooks of one pass: copy each input once per batch (layers handed the same tensor
    share the copy) and stop the forward when every watched layer has run."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.inputs = {name: LayerInputs() for name in names}
        self.batch: Batch | None = None
        self.holdout = False
        self.pending: set[str] = set()
        self.copies: list[tuple[Any, Chunk]] = []
        self.stop_early = False

    def run(self, root: nn.Module, batch: Batch, stop_early: bool, holdout: bool) -> None:
        self.batch, self.holdout, self.stop_early = batch, holdout, stop_early
        self.pending = set(self.names)
        self.copies = []
        try:
            batch.run(root)
        except _StopForward:
            pass
        finally:
            self.copies = []  # drop the references to this batch's activations

    def hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x, raw = layer_input(name, args, kwargs), _raw_input(args, kwargs)
            chunk = next((c for seen, c in self.copies if seen is raw), None)
            if chunk is None:
                mask = None if self.batch is None else token_mask(self.batch, x)
                chunk = Chunk(x.reshape(-1, x.shape[-1]).clone(memory_format=torch.contiguous_format), mask)
                self.copies.append((raw, chunk))
            target = self.inputs[name].holdout if self.holdout else self.inputs[name].chunks
            target.append(chunk)
            self.pending.discard(name)
            if self.stop_early and not self.pending:
                raise _StopForward
        return hook


def _raw_input(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The input object itself (``layer_input`` returns a detached view, a new object each
    call): two layers share an input when they were handed this very object."""
    return args[0] if args else kwargs.get("input")


def shared_groups(stage: Stage, inputs: Mapping[str, LayerInputs]) -> list[list[str]]:
    """The layers of ``stage`` that saw the very same inputs in every call (one Hessian each
    group), in stage order.

    >>> shared_groups(Stage(["q", "k", "v"]), inputs)
    [['q', 'k', 'v']]
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in stage.layers:
        key = tuple(id(c) for c in inputs[name].chunks)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def windows(stages: Sequence[Stage], calib: CalibSet, traced_rows: int, budget_bytes: int) -> list[list[Stage]]:
    """Consecutive stages whose captured inputs fit in ``budget_bytes`` together (each stage's
    size estimated from the traced batch of ``traced_rows`` rows); at least one stage each.

    >>> [len(w) for w in windows(stages, calib, 8, 512 << 20)]
    [24]
    """
    scale = (calib.rows + calib.holdout.rows) / max(traced_rows, 1)
    out: list[list[Stage]] = []
    used = 0.0
    for stage in stages:
        size = stage.input_bytes * scale
        if out and used + size <= budget_bytes:
            out[-1].append(stage)
            used += size
        else:
            out.append([stage])
            used = size
    return out
