"""Plots of a quantization run, one call each, each returning a matplotlib ``Figure``.

    mono_quant.plot.sqnr(info)                           # SQNR per layer, 10/20/30 dB bands
    mono_quant.plot.sizes(info)                          # bytes before/after per layer type
    mono_quant.plot.weight_histogram(model, qmodel, "fc1")   # weights vs the quantization grid
    mono_quant.plot.scales(model, qmodel, "fc1")         # scales per output channel / group
    mono_quant.plot.error(model, qmodel, "fc1")          # w - dequant(w)

Needs matplotlib (``pip install 'mono_quant[plot]'``); the rest of mono_quant never imports
this module. matplotlib rather than plotly: its figures are static images, so they show in
Jupyter, marimo, VS Code and a saved notebook alike, with no JavaScript, no CDN and no
browser needed to render them (plotly's static export needs a headless browser of its own),
and they are deterministic to test. Figures are ``matplotlib.figure.Figure`` objects made
without pyplot, so nothing is drawn twice or kept open in pyplot's global state: a returned
figure shows once as the cell's output (it has ``_repr_png_``, so Jupyter shows it even when
pyplot was never imported); ``fig.savefig("x.png")`` writes it. Pass ``ax=`` to draw into an
axes of your own figure instead.
"""

from __future__ import annotations

import io
import math
from typing import Any

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ModuleNotFoundError as exc:  # pragma: no cover (the plot extra is installed for tests)
    raise ModuleNotFoundError(
        "mono_quant.plot needs matplotlib, which is not installed: pip install 'mono_quant[plot]' "
        "(or pip install matplotlib)", name="matplotlib") from exc

import torch

from ..info import ACCURACY_LEVELS, QuantizationInfo, format_bytes
from ..validate import ModelOrState
from .quantization import layer_label
from .weights import LayerWeights, layer_weights

__all__ = ["sqnr", "sizes", "weight_histogram", "scales", "error", "TONE_COLOURS"]

# The report's tones (report/table.py uses the same hues as tints).
TONE_COLOURS = {"critical": "#dc2828", "warning": "#f08c00", "fair": "#bebe28", "good": "#2ea043"}
_BEFORE, _AFTER, _FLOAT, _GRID, _CLIP = "#9aa4b1", "#3c78dc", "#3c78dc", "#dc2828", "#222222"


class PlotFigure(Figure):
    """A matplotlib Figure that shows itself as a PNG in notebooks (``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png")
        return buffer.getvalue()


def sqnr(info: QuantizationInfo, *, ax: Any = None) -> Figure:
    """Horizontal bars: each quantized layer's weight SQNR in dB, coloured by its accuracy
    level, over the critical / warning / fair / good bands (10, 20, 30 dB). Infinite SQNR
    (an exact weight) is drawn at the right edge and labelled "inf".

    >>> fig = mono_quant.plot.sqnr(info)
    >>> fig.savefig("sqnr.png")
    """
    _check_info(info, "sqnr")
    layers = [layer for layer in info.layers.values() if layer.quantized and layer.sqnr_db is not None]
    if not layers:
        raise ValueError("no layer of this run has an SQNR (nothing was quantized, or compute_sqnr=False): "
                         "quantize with compute_sqnr=True to plot it")
    finite = [layer.sqnr_db for layer in layers if math.isfinite(layer.sqnr_db)]
    top = max([40.0] + [v + 5.0 for v in finite])
    bottom = min([0.0] + [v - 2.0 for v in finite])
    fig, ax = _figure(ax, (8.0, min(0.24 * len(layers) + 1.4, 120.0)))
    edges = [bottom] + [bound for bound, _ in ACCURACY_LEVELS] + [top]
    for (low, high), (_, level) in zip(zip(edges, edges[1:]), [*ACCURACY_LEVELS, (top, "good")]):
        ax.axvspan(max(low, bottom), high, color=TONE_COLOURS[level], alpha=0.12, lw=0, label=f"{level}")
    values = [_clip(layer.sqnr_db, bottom, top) for layer in layers]
    colours = [TONE_COLOURS[layer.accuracy] for layer in layers]
    positions = list(range(len(layers)))
    ax.barh(positions, values, left=0, color=colours, height=0.7)
    for y, layer in zip(positions, layers):
        if math.isinf(layer.sqnr_db):
            ax.text(top, y, " inf" if layer.sqnr_db > 0 else " -inf", va="center", ha="right", fontsize=8)
    ax.set_yticks(positions, [layer_label(layer.name) for layer in layers], fontsize=_tick_size(len(layers)))
    ax.invert_yaxis()  # model order, top to bottom
    ax.set_xlim(bottom, top)
    ax.set_ylim(len(layers) - 0.5, -0.5)
    for bound, _ in ACCURACY_LEVELS:
        ax.axvline(bound, color="#666666", lw=0.6, ls="--")
    ax.set_xlabel("weight SQNR (dB), higher is better")
    ax.set_title(f"SQNR per layer ({len(layers)} quantized)")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    return fig


def sizes(info: QuantizationInfo, *, ax: Any = None) -> Figure:
    """Bytes before and after quantization per layer type (Linear, Conv2d, ...), summed over
    the layers the run considered, with the ratio over each pair of bars.

    >>> fig = mono_quant.plot.sizes(info)
    """
    _check_info(info, "sizes")
    totals: dict[str, list[int]] = {}
    for layer in info.layers.values():
        before_after = totals.setdefault(layer.module_type, [0, 0])
        before_after[0] += layer.bytes_before
        before_after[1] += layer.bytes_after
    if not totals:
        raise ValueError("this run considered no layer: there are no sizes to plot")
    types = list(totals)
    largest = max(max(pair) for pair in totals.values())
    unit, div = _unit(largest)
    fig, ax = _figure(ax, (max(4.0, 1.3 * len(types) + 2.0), 3.6))
    xs = list(range(len(types)))
    ax.bar([x - 0.2 for x in xs], [totals[t][0] / div for t in types], width=0.4, color=_BEFORE, label="before")
    ax.bar([x + 0.2 for x in xs], [totals[t][1] / div for t in types], width=0.4, color=_AFTER, label="after")
    for x, t in zip(xs, types):
        before, after = totals[t]
        ax.text(x, max(before, after) / div, f"{before / after if after else 1.0:.2f}x", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(xs, types)
    ax.set_ylabel(unit)
    ax.set_ylim(0, largest / div * 1.15)
    ax.set_title(f"Size per layer type: {format_bytes(info.total_bytes_before)} -> "
                 f"{format_bytes(info.total_bytes_after)} ({info.compression_ratio:.2f}x)")
    ax.legend(fontsize=8)
    return fig


def weight_histogram(
    original: ModelOrState,
    quantized: ModelOrState,
    layer: str,
    *,
    channel: int | None = None,
    group: int | None = None,
    bins: int = 80,
    ax: Any = None,
) -> Figure:
    """Histogram of one layer's float weights that share a scale (an output channel, or one
    group of it for INT4) with the values that scale can represent (the grid, thin red
    lines) and its clipping range (dashed). ``channel``/``group`` default to the unit with
    the largest squared error. A cast (fp16) layer shows all its weights, without a grid.

    >>> fig = mono_quant.plot.weight_histogram(model, qmodel, "fc1")
    >>> fig = mono_quant.plot.weight_histogram(model, qmodel, "fc1", channel=3, group=0)
    """
    w = layer_weights(original, quantized, layer)
    fig, ax = _figure(ax, (7.5, 3.6))
    if w.scale is None:
        values = w.original.reshape(-1)
        ax.hist(values.numpy(), bins=_bins(bins), color=_FLOAT, alpha=0.8)
        ax.set_title(f"{layer_label(layer)}: all {values.numel()} weights ({w.kind}, no grid)")
        ax.set_xlabel("weight value")
        return fig
    row, grp = _pick_unit(w, channel, group)
    values, _ = w.unit(row, grp)
    grid = w.grid(row, grp)
    lo, hi = float(grid[0]), float(grid[-1])
    span = max(float(values.max()), hi) - min(float(values.min()), lo)
    edge = 0.03 * span if span > 0 else 1.0
    ax.hist(values.numpy(), bins=_bins(bins), color=_FLOAT, alpha=0.75, label="float weights")
    width = 0.9 if len(grid) <= 32 else 0.35  # 256 INT8 levels draw as a fine texture
    for g in grid.tolist():
        ax.axvline(g, color=_GRID, lw=width, alpha=0.55)
    ax.axvline(lo, color=_CLIP, lw=1.4, ls="--", label=f"clipping range [{lo:.3g}, {hi:.3g}]")
    ax.axvline(hi, color=_CLIP, lw=1.4, ls="--")
    ax.plot([], [], color=_GRID, lw=1, label=f"grid: {len(grid)} levels, step {float(w.scale[row, grp]):.3g}")
    ax.set_xlim(min(float(values.min()), lo) - edge, max(float(values.max()), hi) + edge)
    unit = f"channel {row}" + (f", group {grp} of {w.groups}" if w.groups > 1 else "")
    ax.set_title(f"{layer_label(layer)} ({w.kind}): {unit}, {values.numel()} weights")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=7, loc="upper right")
    return fig


def scales(original: ModelOrState, quantized: ModelOrState, layer: str, *, ax: Any = None) -> Figure:
    """Heatmap of one layer's scales (the grid step of each unit): output channels down and
    groups across (INT4), or a strip with one cell per output channel (INT8).

    >>> fig = mono_quant.plot.scales(model, qmodel, "fc1")
    """
    w = layer_weights(original, quantized, layer)
    if w.scale is None:
        raise ValueError(f"layer {layer_label(layer)!r} is only {w.kind}; it has no scales: "
                         "pick an int8 or int4 layer")
    data = w.scale if w.groups > 1 else w.scale.reshape(1, -1)
    fig, ax = _figure(ax, (7.5, 3.8) if w.groups > 1 else (7.5, 2.2))
    image = ax.imshow(data.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="scale")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if w.groups > 1:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"group ({w.group_width} inputs each)")
        ax.set_ylabel("output channel")
    else:
        ax.set_xlabel("output channel")
        ax.set_yticks([])
    ax.set_title(f"{layer_label(layer)} ({w.kind}): {w.scale.numel()} scales, "
                 f"{float(w.scale.min()):.3g} to {float(w.scale.max()):.3g}")
    return fig


def error(
    original: ModelOrState, quantized: ModelOrState, layer: str, *, bins: int = 80, ax: Any = None,
) -> Figure:
    """Histogram of the quantization error ``w - dequant(w)`` over one layer's weights, with
    its RMS, largest magnitude and SQNR; rounding keeps each error within half a step of its
    unit (dotted lines at +-half the median step), clipping shows as tails beyond.

    >>> fig = mono_quant.plot.error(model, qmodel, "fc1")
    """
    w = layer_weights(original, quantized, layer)
    diff = (w.original - w.dequantized).reshape(-1)
    fig, ax = _figure(ax, (7.5, 3.6))
    ax.hist(diff.numpy(), bins=_bins(bins), color=_AFTER, alpha=0.8)
    if w.scale is not None:
        half = float(w.scale.median()) / 2
        ax.axvline(-half, color="#666666", ls=":", lw=1)
        ax.axvline(half, color="#666666", ls=":", lw=1, label=f"± half the median step ({half:.3g})")
        ax.legend(fontsize=7, loc="upper right")
    rms = float(diff.double().square().mean().sqrt())
    signal = float(w.original.double().square().sum())
    noise = float(diff.double().square().sum())
    db = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    ax.set_title(f"{layer_label(layer)} ({w.kind}): error RMS {rms:.3g}, max |error| "
                 f"{float(diff.abs().max()):.3g}, SQNR {db:.1f} dB")
    ax.set_xlabel("w - dequant(w)")
    ax.set_ylabel("count")
    return fig


# ---- helpers ------------------------------------------------------------------------------


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = PlotFigure(figsize=size, layout="constrained", dpi=100)
    return fig, fig.add_subplot()


def _check_info(info: Any, name: str) -> None:
    if not isinstance(info, QuantizationInfo):
        raise TypeError(f"plot.{name} needs the QuantizationInfo that dynamic_quantize / static_quantize returned; "
                        f"got {type(info).__name__}")


def _pick_unit(w: LayerWeights, channel: int | None, group: int | None) -> tuple[int, int]:
    if channel is None:
        worst_row, worst_group = w.worst_unit()
        if group is None:
            return worst_row, worst_group
        w.unit(0, group)  # checks the group
        return int(torch.argmax(w.unit_errors()[:, group])), group
    if group is None:
        w.unit(channel, 0)  # checks the channel
        return channel, int(torch.argmax(w.unit_errors()[channel]))
    w.unit(channel, group)
    return channel, group


def _bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1; got {bins!r}")
    return bins


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _unit(largest: int) -> tuple[str, float]:
    for unit, div in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if largest >= div:
            return unit, div
    return "bytes", 1.0


def _tick_size(count: int) -> float:
    return 8.0 if count <= 60 else 6.0
