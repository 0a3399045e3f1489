"""What a quantization run did: one ``LayerInfo`` per layer, gathered in ``QuantizationInfo``.

Accuracy levels on the SQNR of a converted weight are defined here and only here
(``ACCURACY_LEVELS``); a layer rated "warning" or "critical" adds a line with a suggestion
to ``QuantizationInfo.warnings``. A layer converted to another format than the one asked for
(int4 -> int8) has the reason in ``details["fallback"]``; the printed report lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import GROUP_SIZES
from .report.display import ReportDisplay

# (upper bound in dB, level), checked in order; at or above the last bound a layer is "good".
ACCURACY_LEVELS: tuple[tuple[float, str], ...] = ((10.0, "critical"), (20.0, "warning"), (30.0, "fair"))
GOOD = "good"
FLAGGED_LEVELS = ("critical", "warning")
STATUSES = ("quantized", "skipped")


def accuracy_level(sqnr_db: float | None) -> str | None:
    """"critical" (< 10 dB), "warning" (< 20), "fair" (< 30) or "good"; None without an SQNR.

    >>> accuracy_level(42.0), accuracy_level(15.0)
    ('good', 'warning')
    """
    if sqnr_db is None:
        return None
    for bound, level in ACCURACY_LEVELS:
        if sqnr_db < bound:
            return level
    return GOOD


@dataclass(frozen=True, repr=False)  # repr, HTML, to_dict: mono_quant.report
class LayerInfo(ReportDisplay):
    """The record of one layer: what it was, what it became, and how faithful it is.

    ``scheme`` describes the conversion ("int8 per-channel symmetric"; "" when skipped),
    ``dtype`` the stored weight dtype afterwards, ``shape`` the weight shape, ``bytes_*`` all
    tensors the layer owns, ``reason`` why it was skipped, ``details`` scheme extras.

    >>> rec = LayerInfo("fc", "Linear", "int8 per-channel symmetric", "int8", (8, 4), 144, 72, 41.2)
    >>> rec.accuracy
    'good'
    """

    name: str
    module_type: str
    scheme: str
    dtype: str
    shape: tuple[int, ...]
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None
    status: str = "quantized"
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(map(repr, STATUSES))}; got {self.status!r}")
        if self.status == "skipped" and not self.reason:
            raise ValueError(f"layer {self.name!r} is skipped but has no reason; give one")
        if self.bytes_before < 0 or self.bytes_after < 0:
            raise ValueError(f"byte counts must be >= 0; got {self.bytes_before} and {self.bytes_after}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def quantized(self) -> bool:
        return self.status == "quantized"

    @property
    def accuracy(self) -> str | None:
        """The accuracy level of ``sqnr_db`` (see ``accuracy_level``)."""
        return accuracy_level(self.sqnr_db)


@dataclass(repr=False)  # repr, HTML, to_dict: mono_quant.report
class QuantizationInfo(ReportDisplay):
    """Every layer a run considered, the skipped ones with their reasons, and warnings.

    >>> model_q, info = dynamic_quantize(model)
    >>> print(info)              # a table: layer, type, scheme, size, SQNR, status
    """

    layers: dict[str, LayerInfo] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: Any = None
    validation: Any = None  # the ValidationReport of the end-of-run checks, when they ran
    precision_plan: Any = None  # gptq_quantize with max_bits_per_weight: the mixed precision plan

    def add(self, layer: LayerInfo) -> None:
        """Record ``layer``: list it as skipped or warn when its accuracy is low.

        >>> info.add(LayerInfo("fc", "Linear", "", "float32", (4, 4), 64, 64,
        ...                    status="skipped", reason="fewer than min_params"))
        """
        if layer.name in self.layers:
            raise ValueError(f"layer {layer.name!r} is already recorded")
        self.layers[layer.name] = layer
        if not layer.quantized:
            self.skipped[layer.name] = layer.reason
        elif layer.accuracy in FLAGGED_LEVELS:
            self.warnings.append(_accuracy_warning(layer))

    @property
    def fallbacks(self) -> dict[str, str]:
        """Layers converted to another format than the one asked for, with the reason.

        >>> info.fallbacks
        {'fc3': 'in_features (100) is not a multiple of group_size (128); ...'}
        """
        return {name: layer.details["fallback"] for name, layer in self.layers.items()
                if layer.quantized and layer.details.get("fallback")}

    @property
    def quantized(self) -> list[str]:
        """Names of the converted layers, in model order."""
        return [name for name, layer in self.layers.items() if layer.quantized]

    @property
    def total_bytes_before(self) -> int:
        return sum(layer.bytes_before for layer in self.layers.values())

    @property
    def total_bytes_after(self) -> int:
        return sum(layer.bytes_after for layer in self.layers.values())

    @property
    def bits_per_weight(self) -> float | None:
        """Average stored bits per weight over the quantized layers, weighted by their weight
        counts: the weight values with their scales and zero points (not the bias), each layer
        counted as what it was stored as (an INT4 run's INT8 fallbacks at ~8 bits). A layer
        whose record has no ``details["bits_per_weight"]`` counts all it stores. None when no
        layer was quantized.

        >>> round(dynamic_quantize(model, "int4", group_size=128)[1].bits_per_weight, 4)
        4.1875
        """
        bits = weights = 0.0
        for layer in self.layers.values():
            numel = math.prod(layer.shape)
            if not layer.quantized or numel == 0:
                continue
            per_weight = layer.details.get("bits_per_weight")
            bits += (8.0 * layer.bytes_after if per_weight is None else per_weight * numel)
            weights += numel
        return bits / weights if weights else None

    @property
    def compression_ratio(self) -> float:
        """``total_bytes_before / total_bytes_after`` (1.0 when nothing was counted)."""
        after = self.total_bytes_after
        return self.total_bytes_before / after if after else 1.0

    def __str__(self) -> str:
        header = ("Layer", "Type", "Scheme", "Size", "SQNR", "Status")
        rows = [header] + [_row(layer) for layer in self.layers.values()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        bits = self.bits_per_weight
        lines.append(
            f"Total: {format_bytes(self.total_bytes_before)} -> {format_bytes(self.total_bytes_after)}"
            f" ({self.compression_ratio:.2f}x), {len(self.quantized)} of {len(self.layers)} layers quantized"
            + ("" if bits is None else f", {bits:.2f} bits per weight (scales and zero points included)")
        )
        fallbacks = self.fallbacks
        if fallbacks:
            lines.append(f"Fallbacks ({len(fallbacks)}):")
            lines.extend(f"  - {name or '(root)'}: {reason}" for name, reason in fallbacks.items())
        if self.precision_plan is not None:
            lines.append(str(self.precision_plan))
        if self.warnings:
            lines.append(f"Warnings ({len(self.warnings)}):")
            lines.extend(f"  - {warning}" for warning in self.warnings)
        return "\n".join(lines)


def format_bytes(n: int) -> str:
    """Human-readable size with binary units.

    >>> format_bytes(1536)
    '1.5 KiB'
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_sqnr(sqnr_db: float | None) -> str:
    if sqnr_db is None:
        return "-"
    if math.isinf(sqnr_db):
        return "inf dB" if sqnr_db > 0 else "-inf dB"
    return f"{sqnr_db:.1f} dB"


def _row(layer: LayerInfo) -> tuple[str, ...]:
    size = f"{format_bytes(layer.bytes_before)} -> {format_bytes(layer.bytes_after)}"
    if layer.quantized:
        status = layer.status if layer.accuracy is None else f"{layer.status} ({layer.accuracy})"
    else:
        status = f"skipped: {layer.reason}"
    return (layer.name or "(root)", layer.module_type, layer.scheme or "-", size,
            format_sqnr(layer.sqnr_db), status)


def _accuracy_warning(layer: LayerInfo) -> str:
    name = layer.name or "(root)"
    hints = [f"skip it with modules_to_not_convert=[{name!r}]"]
    group_size = layer.details.get("group_size")
    if group_size is not None:
        smaller = [g for g in GROUP_SIZES if g < group_size]
        options = [f"group_size={smaller[-1]}"] if smaller else []
        if layer.details.get("symmetric"):  # zero points are stored either way: no size cost
            options.append("symmetric=False")
        if options:
            hints.append(f"use {' or '.join(options)}")
        hints.append("use dtype='int8' instead of 'int4'")
    elif layer.details.get("per_channel") is False:
        hints.append("use per_channel=True")
    return (
        f"{name}: SQNR {format_sqnr(layer.sqnr_db)} is {layer.accuracy} "
        f"(good is >= {ACCURACY_LEVELS[-1][0]:g} dB); {', or '.join(hints)}"
    )
