"""Display builders for ``CalibrationStats`` (see ``report.display``): one row per calibrated
layer (chosen input range, range seen, calls, whether the range clips), the run on top."""

from __future__ import annotations

from typing import Any

from ..calibration import CalibrationStats, LayerRange
from .display import as_dict, as_records, as_table, json_value, summary_line
from .quantization import layer_label
from .table import Cell, Column, Table

COLUMNS = [Column("Layer"), Column("Type"), Column("Range (min, max)", "right"), Column("Seen (min, max)", "right"),
           Column("Calls", "right"), Column("Clipped")]


def _range(low: float, high: float) -> str:
    return f"[{low:.4g}, {high:.4g}]"


def _row(r: LayerRange) -> list[Cell]:
    clipped = (Cell("yes", tone="fair", hint="the chosen range leaves seen values outside: they saturate")
               if r.clipped else Cell("no", tone="muted"))
    return [Cell(layer_label(r.name)), Cell(r.module_type), Cell(_range(r.min, r.max), sort=r.max - r.min),
            Cell(_range(r.data_min, r.data_max), sort=r.data_max - r.data_min), Cell(str(r.calls), sort=r.calls),
            clipped]


@as_table.register
def _stats_table(stats: CalibrationStats) -> Table:
    chips = [Cell(f"observer {stats.observer}"),
             Cell(f"{stats.num_samples} samples in {stats.num_batches} batches"),
             Cell(f"{len(stats.layers)} layers")]
    clipped = sum(r.clipped for r in stats.layers.values())
    if clipped:
        chips.append(Cell(f"{clipped} clipped", tone="fair"))
    notes: list[tuple[str, str]] = []
    if stats.never_called:
        notes.append(("warning", f"never called (stay float): {', '.join(map(layer_label, stats.never_called))}"))
    if stats.holdout_is_calibration:
        notes.append(("info", "the data ran out: the last calibration batch stands in for the held-back batch"))
    if stats.skipped:
        notes.append(("info", f"{len(stats.skipped)} layer(s) left alone by static quantization"))
    rows = [_row(r) for r in stats.layers.values()]
    return Table("CalibrationStats", chips, notes, COLUMNS, rows, empty="no layer was called")


@summary_line.register
def _stats_line(stats: CalibrationStats) -> str:
    text = (f"observer {stats.observer!r}, {len(stats.layers)} layers, {stats.num_samples} samples "
            f"in {stats.num_batches} batches")
    if stats.never_called:
        text += f", {len(stats.never_called)} never called"
    return f"CalibrationStats({text})"


@as_dict.register
def _stats_dict(stats: CalibrationStats) -> dict[str, Any]:
    return {
        "observer": stats.observer,
        "num_samples": stats.num_samples,
        "num_batches": stats.num_batches,
        "layers": [json_value(_record(r)) for r in stats.layers.values()],
        "never_called": list(stats.never_called),
        "skipped": dict(stats.skipped),
        "holdout_is_calibration": stats.holdout_is_calibration,
    }


def _record(r: LayerRange) -> dict[str, Any]:
    return {"name": r.name, "module_type": r.module_type, "observer": r.observer, "min": r.min, "max": r.max,
            "data_min": r.data_min, "data_max": r.data_max, "calls": r.calls, "clipped": r.clipped}


@as_records.register
def _stats_records(stats: CalibrationStats) -> list[dict[str, Any]]:
    return [_record(r) for r in stats.layers.values()]
