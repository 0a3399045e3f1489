"""Display builders for ``ValidationReport`` (see ``report.display``): one row per check
(name, status coloured, message), the verdict and the sizes on top."""

from __future__ import annotations

from typing import Any

from ..info import format_bytes, format_sqnr
from ..validate import ValidationReport
from .display import as_dict, as_records, as_table, json_value, summary_line
from .quantization import layer_label, ratio, size_text
from .table import Cell, Column, Table

_TONE = {"passed": "passed", "failed": "failed", "skipped": "skipped"}


@as_table.register
def _report_table(report: ValidationReport) -> Table:
    chips = [Cell("passed" if report.passed else "FAILED", tone="passed" if report.passed else "failed"),
             Cell(f"{len(report.checks)} check{'s' if len(report.checks) != 1 else ''}")]
    if report.bytes_before or report.bytes_after:
        chips.append(Cell(f"{size_text(report.bytes_before, report.bytes_after)} "
                          f"({ratio(report.bytes_before, report.bytes_after):.2f}x smaller)"))
    if report.layer_sqnr:
        name, db = min(report.layer_sqnr.items(), key=lambda item: item[1])
        chips.append(Cell(f"{len(report.layer_sqnr)} layers measured, lowest SQNR {format_sqnr(db)} "
                          f"({layer_label(name)})"))
    notes = [] if report.passed else [("failed", report.summary())]
    rows = [[Cell(c.name), Cell(c.status, tone=_TONE.get(c.status)), Cell(c.message)] for c in report.checks.values()]
    return Table("ValidationReport", chips, notes, [Column("Check"), Column("Status"), Column("Message")], rows,
                 empty="no checks ran")


@summary_line.register
def _report_line(report: ValidationReport) -> str:
    if report.passed:
        ran = [c.name for c in report.checks.values() if c.status == "passed"]
        skipped = [c.name for c in report.checks.values() if c.status == "skipped"]
        text = f"passed: {', '.join(ran) or 'no check ran'}" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    else:
        text = f"FAILED: {', '.join(c.name for c in report.failures)}"
    if report.bytes_before or report.bytes_after:
        text += f"; {format_bytes(report.bytes_before)} -> {format_bytes(report.bytes_after)}"
    return f"ValidationReport({text})"


@as_dict.register
def _report_dict(report: ValidationReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "summary": report.summary(),
        "checks": {name: {"status": c.status, "message": c.message} for name, c in report.checks.items()},
        "layer_sqnr": {name: json_value(db) for name, db in report.layer_sqnr.items()},
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
    }


@as_records.register
def _report_records(report: ValidationReport) -> list[dict[str, Any]]:
    return [{"check": c.name, "status": c.status, "passed": c.passed, "message": c.message}
            for c in report.checks.values()]
