"""``calibrate``: run a model on sample data and record the input range of every layer that
static quantization would convert.

Observers (``mono_quant.observers``) attach as forward pre-hooks on those layers and see
each input tensor. ``calibrate`` runs a deep copy of the caller's model, so nothing a forward
changes (a buffer it updates, an attribute it sets) reaches the caller's model; the copy runs
in eval mode under ``torch.no_grad()``, and afterwards, also when the data or the model
raises, every hook is removed and every module's training flag is what it was. One batch
after the calibration samples is held back (not observed): ``static_quantize`` measures each
converted layer's output SQNR on it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import _kernels as K
from ._calib_data import Batch, expected_samples, iter_batches, progress_bar
from ._layers import own_tensors
from ._working_copy import inference, working_copy
from .config import QuantizationConfig
from .observers import Observer, get_observer
from .report.display import ReportDisplay
from .schemes.embedding import EMBEDDING_TYPES, EmbeddingScheme
from .schemes.static_int8 import StaticInt8Scheme
from .selection import module_skip_reason, parameter_owners

HOLDOUT_MAX_ROWS = 32  # rows of the held-back batch kept for the output SQNR


@dataclass(frozen=True)
class LayerRange:
    """What calibration saw at one layer's input.

    ``min``/``max``: the range the observer chose (what the input is quantized over);
    ``data_min``/``data_max``: the extremes actually seen; ``calls``: forward calls observed.

    >>> stats.layers["fc1"].range
    (-2.31, 4.07)
    """

    name: str
    module_type: str
    observer: str
    min: float
    max: float
    data_min: float
    data_max: float
    calls: int

    @property
    def range(self) -> tuple[float, float]:
        return self.min, self.max

    @property
    def clipped(self) -> bool:
        """True when the chosen range leaves some seen values outside (they will saturate)."""
        return self.min > self.data_min or self.max < self.data_max


@dataclass(repr=False)  # repr, HTML, to_dict: mono_quant.report
class CalibrationStats(ReportDisplay):
    """The result of ``calibrate``: per-layer input ranges and how they were obtained.

    ``layers``: name -> ``LayerRange`` of each layer that was called; ``never_called``:
    selected layers the data never reached; ``skipped``: layers static quantization leaves
    alone, with the reason; ``num_samples`` / ``num_batches``: what the model ran on;
    ``holdout``: the held-back batch (``holdout_is_calibration`` is True when the data ran
    out and the last calibration batch stands in for it).

    >>> stats = calibrate(model, loader, observer="percentile")
    >>> print(stats)
    """

    layers: dict[str, LayerRange]
    observer: str
    num_samples: int
    num_batches: int
    never_called: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    holdout: Batch | None = field(default=None, repr=False)
    holdout_is_calibration: bool = False

    def __str__(self) -> str:
        header = ("Layer", "Type", "Range", "Seen", "Calls")
        rows = [header] + [
            (r.name or "(root)", r.module_type, f"[{r.min:.4g}, {r.max:.4g}]",
             f"[{r.data_min:.4g}, {r.data_max:.4g}]", str(r.calls))
            for r in self.layers.values()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"Observer {self.observer!r}: {self.num_samples} samples in {self.num_batches} batches, "
            f"{len(self.layers)} layers"
        )
        if self.never_called:
            lines.append(f"Never called (stay float): {', '.join(self.never_called)}")
        return "\n".join(lines)


def calibrate(
    model: nn.Module,
    calib_data: Any,
    *,
    config: QuantizationConfig | Mapping[str, Any] | str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> CalibrationStats:
    """Run ``model`` on ``calib_data`` and return the input range of every layer that
    ``static_quantize`` with the same options would convert. ``model`` is not changed: a deep
    copy of it runs (in eval mode, without gradients).

    ``calib_data``: a DataLoader or any iterable of batches (tensors, ``(input, target)``
    tuples, dicts of keyword arguments), or one tensor / dict. ``num_samples`` (default 150)
    rows are used, then one more batch is held back. ``progress``: None shows a bar when more
    than 50 samples will run, True always, False never. ``options``/``config`` as in
    ``static_quantize`` (``observer``, ``num_samples``, layer selection, ...).

    >>> stats = calibrate(model, loader, observer="percentile", num_samples=256)
    >>> stats.layers["fc1"].range
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate needs an nn.Module (it runs the model); got {type(model).__name__}")
    cfg = static_config(config, options)
    root = working_copy(model, "calibrate")  # a forward may change the model it runs, even in eval mode
    layers, skipped = select_layers(root, cfg)
    return run_calibration(root, calib_data, layers, cfg, progress, skipped)


def static_config(config: Any, options: Mapping[str, Any]) -> QuantizationConfig:
    """The run's config (kwargs > config > file > defaults), refusing non-int8 dtypes."""
    cfg = QuantizationConfig.from_sources(config, **options)
    if cfg.dtype != "int8":
        raise ValueError(
            f"static quantization stores int8 weights and inputs; got dtype={cfg.dtype!r} "
            "(from the options or the config file): pass dtype='int8'"
        )
    if cfg.layer_config:
        raise ValueError("layer_config (per-layer formats) is for dynamic_quantize and quantize_checkpoint; static "
                         "quantization makes every chosen layer static int8: choose the layers with "
                         "modules_to_not_convert, layer_names or filter_fn instead")
    return cfg


def select_layers(model: nn.Module, cfg: QuantizationConfig, *,
                  tables: bool = False) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The layers static quantization converts (name -> module) and the skipped ones
    (name -> reason), by the same rules as ``dynamic_quantize``; with ``tables``, the
    embedding tables ``quantize_embeddings`` converts too (they need no calibration)."""
    scheme = StaticInt8Scheme(cfg)
    table_scheme = EmbeddingScheme(cfg) if tables else None
    owners = parameter_owners(model)
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not own_tensors(module):
            continue
        layer_scheme = table_scheme if table_scheme is not None and isinstance(module, EMBEDDING_TYPES) else scheme
        reason = module_skip_reason(name, module, layer_scheme, owners)
        if reason is None:
            chosen[name] = module
        else:
            skipped[name] = reason
    return chosen, skipped


def run_calibration(
    model: nn.Module,
    calib_data: Any,
    layers: Mapping[str, nn.Module],
    cfg: QuantizationConfig,
    progress: bool | None = None,
    skipped: Mapping[str, str] | None = None,
) -> CalibrationStats:
    """Observe the inputs of ``layers`` (modules of ``model``) while ``model`` runs on
    ``calib_data``; hooks and training flags are restored whatever happens."""
    observer_cls = get_observer(cfg.observer)
    watches = {name: _InputWatch(name, observer_cls(cfg)) for name in layers}
    pairs = [(layers[name], watches[name]) for name in layers]
    with inference(model), forward_hooks(pairs, pre=True), progress_bar(expected_samples(calib_data, cfg.num_samples), progress) as bar:
        fed = _feed(model, calib_data, cfg.num_samples, bar.update)
    ranges = {name: watch.result(layers[name], cfg.observer) for name, watch in watches.items() if watch.calls}
    return CalibrationStats(
        layers=ranges,
        observer=cfg.observer,
        num_samples=fed.samples,
        num_batches=fed.batches,
        never_called=[name for name, watch in watches.items() if not watch.calls],
        skipped=dict(skipped or {}),
        holdout=fed.holdout,
        holdout_is_calibration=fed.holdout_is_calibration,
    )


@dataclass
class _Fed:
    samples: int = 0
    batches: int = 0
    holdout: Batch | None = None
    holdout_is_calibration: bool = False


def _feed(model: nn.Module, calib_data: Any, num_samples: int, advance: Callable[[int], Any]) -> _Fed:
    """Run ``model`` on up to ``num_samples`` rows of ``calib_data``, then pick the held-back
    batch: the rest of a cut batch, else the next batch, else the last one run."""
    fed = _Fed()
    source = iter_batches(calib_data)
    last = leftover = None
    for batch in source:
        batch, leftover = batch.split(num_samples - fed.samples)
        batch.run(model)
        fed.samples += batch.rows
        fed.batches += 1
        advance(batch.rows)
        last = batch
        if fed.samples >= num_samples:
            break
    if last is None:
        raise ValueError("calib_data yielded no samples; pass at least one non-empty batch")
    holdout = leftover if leftover is not None else next(source, None)
    if holdout is None:
        holdout, fed.holdout_is_calibration = last, True
    fed.holdout = holdout.split(HOLDOUT_MAX_ROWS)[0]
    return fed


class _InputWatch:
    """The forward pre-hook of one layer: feeds its input to the observer and tracks the
    extremes seen."""

    def __init__(self, name: str, observer: Observer) -> None:
        self.name = name
        self.observer = observer
        self.calls = 0
        self.data_min = math.inf
        self.data_max = -math.inf

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = layer_input(self.name, args, kwargs)
        try:
            if x.numel():
                mn, mx = K.minmax(x)
                self.data_min = min(self.data_min, float(mn))
                self.data_max = max(self.data_max, float(mx))
            self.observer.observe(x)
        except ValueError as exc:
            raise ValueError(f"calibrating layer {self.name!r}: {exc}") from exc
        self.calls += 1

    def result(self, module: nn.Module, observer_name: str) -> LayerRange:
        low, high = self.observer.range()
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))
                and math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(
                f"observer {observer_name!r} returned the range ({low!r}, {high!r}) for layer "
                f"{self.name!r}; a range must be two finite numbers with min <= max"
            )
        return LayerRange(self.name, type(module).__name__, observer_name, float(low), float(high),
                          self.data_min, self.data_max, self.calls)


def layer_input(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The input tensor of a Linear / Conv2d call (positional, or the ``input`` keyword)."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"layer {name!r} was called with {type(x).__name__ if x is not None else 'no input'}; "
            "calibration needs a floating-point tensor input"
        )
    return x.detach()


@contextlib.contextmanager
def forward_hooks(pairs: list[tuple[nn.Module, Callable[..., Any]]], pre: bool) -> Iterator[None]:
    """Attach each ``(module, hook)`` as a forward pre-hook (``pre``) or forward hook, with
    keyword arguments; all are removed on exit, also on error."""
    with contextlib.ExitStack() as stack:
        for module, hook in pairs:
            if pre:
                handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            else:
                handle = module.register_forward_hook(hook, with_kwargs=True)
            stack.callback(handle.remove)
        yield
