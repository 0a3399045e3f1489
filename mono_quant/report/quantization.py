"""Display builders for ``QuantizationInfo`` and ``LayerInfo`` (see ``report.display``).

The HTML table: one row per layer in model order (layer, type, scheme, size before -> after,
ratio, SQNR coloured by its accuracy level, status, reason); above it the totals, the
accuracy counts, the end-of-run validation, fallbacks and warnings.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

from ..info import ACCURACY_LEVELS, GOOD, LayerInfo, QuantizationInfo, format_bytes, format_sqnr
from .display import as_dict, as_records, as_table, json_value, summary_line
from .table import Cell, Column, Table

LEVELS = tuple(level for _, level in ACCURACY_LEVELS) + (GOOD,)  # worst first
COLUMNS = [Column("Layer"), Column("Type"), Column("Scheme"), Column("Size", "right"), Column("Ratio", "right"),
           Column("SQNR", "right"), Column("Status"), Column("Reason")]


def layer_label(name: str) -> str:
    """How a layer name is shown: the root module (name "") is "(root)"."""
    return name or "(root)"


def size_text(before: int, after: int) -> str:
    return f"{format_bytes(before)} → {format_bytes(after)}"


def ratio(before: int, after: int) -> float:
    """``before / after``; 1.0 when nothing was counted."""
    return before / after if after else 1.0


def sqnr_cell(sqnr_db: float | None, level: str | None) -> Cell:
    hint = None if level is None else f"{level}: " + _level_rule(level)
    return Cell(format_sqnr(sqnr_db), tone=level, hint=hint, sort=None if sqnr_db is None else json_value(sqnr_db))


def _level_rule(level: str) -> str:
    bounds = [b for b, _ in ACCURACY_LEVELS]
    names = list(LEVELS)
    i = names.index(level)
    low = f"{bounds[i - 1]:g}" if i > 0 else None
    high = f"{bounds[i]:g}" if i < len(bounds) else None
    if low is None:
        return f"below {high} dB"
    return f"{low} dB and above" if high is None else f"{low} to {high} dB"


def _row(layer: LayerInfo) -> list[Cell]:
    fallback = layer.details.get("fallback") if layer.quantized else None
    if layer.quantized:
        status = Cell(layer.accuracy or "quantized", tone=layer.accuracy)
        reason = Cell(f"fallback: {fallback}", tone="info") if fallback else Cell("")
        ratio_cell = Cell(f"{ratio(layer.bytes_before, layer.bytes_after):.2f}x",
                          sort=round(ratio(layer.bytes_before, layer.bytes_after), 4))
    else:
        status, reason, ratio_cell = Cell("skipped", tone="skipped"), Cell(layer.reason, tone="muted"), Cell("-")
    return [
        Cell(layer_label(layer.name)),
        Cell(layer.module_type),
        Cell(layer.scheme or "-", tone=None if layer.scheme else "muted"),
        Cell(size_text(layer.bytes_before, layer.bytes_after), sort=layer.bytes_after),
        ratio_cell,
        sqnr_cell(layer.sqnr_db, layer.accuracy),
        status,
        reason,
    ]


def lowest_sqnr(info: QuantizationInfo) -> LayerInfo | None:
    measured = [layer for layer in info.layers.values() if layer.quantized and layer.sqnr_db is not None]
    return min(measured, key=lambda layer: layer.sqnr_db) if measured else None


def level_counts(info: QuantizationInfo) -> dict[str, int]:
    """How many quantized layers sit at each accuracy level, worst first (levels seen only)."""
    counts = Counter(layer.accuracy for layer in info.layers.values() if layer.quantized and layer.accuracy)
    return {level: counts[level] for level in LEVELS if counts[level]}


@as_table.register
def _info_table(info: QuantizationInfo) -> Table:
    before, after = info.total_bytes_before, info.total_bytes_after
    chips = [Cell(f"{len(info.quantized)} of {len(info.layers)} layers quantized"),
             Cell(f"{size_text(before, after)} ({info.compression_ratio:.2f}x smaller)")]
    if info.config is not None and getattr(info.config, "dtype", None):
        chips.insert(0, Cell(str(info.config.dtype)))
    chips += [Cell(f"{level}: {n}", tone=level, hint=_level_rule(level)) for level, n in level_counts(info).items()]
    worst = lowest_sqnr(info)
    if worst is not None:
        chips.append(Cell(f"lowest SQNR {format_sqnr(worst.sqnr_db)} ({layer_label(worst.name)})", tone=worst.accuracy))
    notes: list[tuple[str, str]] = []
    validation = info.validation
    if validation is not None:
        notes.append(("passed" if validation.passed else "failed", f"validation: {validation.summary()}"))
    warned = [(_warning_tone(text), text) for text in info.warnings]
    notes += sorted(warned, key=lambda note: note[0] != "critical")  # critical first, order kept otherwise
    notes += [("info", f"fallback {layer_label(name)}: {reason}") for name, reason in info.fallbacks.items()]
    rows = [_row(layer) for layer in info.layers.values()]
    return Table("QuantizationInfo", chips, notes, COLUMNS, rows, empty="no layers were considered")


def _warning_tone(text: str) -> str:
    """Warnings about a critical layer are red, the others orange."""
    return "critical" if " is critical " in text else "warning"


@summary_line.register
def _info_line(info: QuantizationInfo) -> str:
    parts = [f"{len(info.quantized)} of {len(info.layers)} layers quantized",
             f"{format_bytes(info.total_bytes_before)} -> {format_bytes(info.total_bytes_after)} "
             f"({info.compression_ratio:.2f}x)"]
    worst = lowest_sqnr(info)
    if worst is not None:
        parts.append(f"lowest SQNR {format_sqnr(worst.sqnr_db)} at {layer_label(worst.name)!r}")
    if info.warnings:
        parts.append(f"{len(info.warnings)} warning{'s' if len(info.warnings) != 1 else ''}")
    if info.validation is not None:
        parts.append("validation " + ("passed" if info.validation.passed else "FAILED"))
    return f"QuantizationInfo({', '.join(parts)})"


@as_dict.register
def _info_dict(info: QuantizationInfo) -> dict[str, Any]:
    worst = lowest_sqnr(info)
    return {
        "summary": {
            "layers": len(info.layers),
            "quantized": len(info.quantized),
            "skipped": len(info.skipped),
            "bytes_before": info.total_bytes_before,
            "bytes_after": info.total_bytes_after,
            "compression_ratio": json_value(info.compression_ratio),
            "accuracy_counts": level_counts(info),
            "lowest_sqnr": None if worst is None else {"layer": worst.name, "sqnr_db": json_value(worst.sqnr_db)},
        },
        "config": _config_dict(info.config),
        "layers": [_layer_dict(layer) for layer in info.layers.values()],
        "skipped": dict(info.skipped),
        "fallbacks": info.fallbacks,
        "warnings": list(info.warnings),
        "validation": None if info.validation is None else as_dict(info.validation),
    }


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return {f.name: json_value(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"repr": repr(config)}


@as_records.register
def _info_records(info: QuantizationInfo) -> list[dict[str, Any]]:
    return [layer_record(layer) for layer in info.layers.values()]


def layer_record(layer: LayerInfo) -> dict[str, Any]:
    """A layer as one flat row: numbers stay numbers (``sqnr_db`` NaN when not measured)."""
    return {
        "name": layer.name,
        "module_type": layer.module_type,
        "scheme": layer.scheme,
        "dtype": layer.dtype,
        "shape": "x".join(map(str, layer.shape)),
        "bytes_before": layer.bytes_before,
        "bytes_after": layer.bytes_after,
        "ratio": ratio(layer.bytes_before, layer.bytes_after),
        "sqnr_db": math.nan if layer.sqnr_db is None else float(layer.sqnr_db),
        "accuracy": layer.accuracy,
        "status": layer.status,
        "reason": layer.reason,
        "fallback": layer.details.get("fallback", "") if layer.quantized else "",
    }


def _layer_dict(layer: LayerInfo) -> dict[str, Any]:
    return {
        "name": layer.name,
        "module_type": layer.module_type,
        "scheme": layer.scheme,
        "dtype": layer.dtype,
        "shape": list(layer.shape),
        "bytes_before": layer.bytes_before,
        "bytes_after": layer.bytes_after,
        "sqnr_db": json_value(layer.sqnr_db),
        "accuracy": layer.accuracy,
        "status": layer.status,
        "reason": layer.reason,
        "details": json_value(layer.details),
    }


# ---- LayerInfo: a two-column field/value table -------------------------------------------


@as_table.register
def _layer_table(layer: LayerInfo) -> Table:
    fields = [
        ("type", Cell(layer.module_type)),
        ("scheme", Cell(layer.scheme or "-")),
        ("stored dtype", Cell(layer.dtype)),
        ("shape", Cell("x".join(map(str, layer.shape)) or "scalar")),
        ("size", Cell(f"{size_text(layer.bytes_before, layer.bytes_after)} "
                      f"({ratio(layer.bytes_before, layer.bytes_after):.2f}x)")),
        ("SQNR", sqnr_cell(layer.sqnr_db, layer.accuracy)),
        ("status", Cell(layer.status if layer.quantized else "skipped",
                        tone=layer.accuracy if layer.quantized else "skipped")),
    ]
    if layer.reason:
        fields.append(("reason", Cell(layer.reason)))
    fields += [(str(key), Cell(str(value), tone="info" if key == "fallback" else None))
               for key, value in layer.details.items()]
    rows = [[Cell(key, tone="muted"), value] for key, value in fields]
    chips = [Cell(layer_label(layer.name)), Cell(layer.accuracy or layer.status, tone=layer.accuracy or "skipped")]
    return Table("LayerInfo", chips, [], [Column("Field"), Column("Value")], rows)


@summary_line.register
def _layer_line(layer: LayerInfo) -> str:
    size = f"{format_bytes(layer.bytes_before)} -> {format_bytes(layer.bytes_after)}"
    if not layer.quantized:
        return f"LayerInfo({layer_label(layer.name)!r}, {layer.module_type}, skipped: {layer.reason}, {size})"
    level = f" ({layer.accuracy})" if layer.accuracy else ""
    return (f"LayerInfo({layer_label(layer.name)!r}, {layer.module_type}, {layer.scheme}, {size}, "
            f"SQNR {format_sqnr(layer.sqnr_db)}{level})")


@as_dict.register
def _layer_as_dict(layer: LayerInfo) -> dict[str, Any]:
    return _layer_dict(layer)


@as_records.register
def _layer_records(layer: LayerInfo) -> list[dict[str, Any]]:
    return [layer_record(layer)]
