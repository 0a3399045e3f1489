"""``OutputAgreement``: how closely a quantized model's outputs follow the float model's, one
row per sample (cosine similarity of the output vectors), with the mean and the worst.

>>> agreement = output_agreement(fp32_embeddings, int8_embeddings, SENTENCES)
>>> agreement.mean, agreement.min
(0.9998, 0.9995)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .display import ReportDisplay, as_dict, as_records, as_table, json_value, summary_line
from .table import Cell, Column, Table

# Cosine levels for the colour of a row (a reading aid, not a verdict): 1 - cos in orders of ten.
COSINE_LEVELS: tuple[tuple[float, str], ...] = ((0.99, "critical"), (0.999, "warning"), (0.9999, "fair"))


def cosine_level(cos: float) -> str:
    """"critical" (< 0.99), "warning" (< 0.999), "fair" (< 0.9999) or "good".

    >>> cosine_level(0.9995)
    'fair'
    """
    for bound, level in COSINE_LEVELS:
        if not cos >= bound:
            return level
    return "good"


@dataclass(frozen=True, repr=False)
class OutputAgreement(ReportDisplay):
    """Cosine similarity between matching rows of a reference output and a quantized one.

    ``labels``: what each row is (a sentence); ``cosines``: one per row.
    """

    labels: tuple[str, ...]
    cosines: tuple[float, ...]
    what: str = "output"

    @property
    def mean(self) -> float:
        return sum(self.cosines) / len(self.cosines)

    @property
    def min(self) -> float:
        return min(self.cosines)


def output_agreement(reference: torch.Tensor, outputs: torch.Tensor, labels: Sequence[str] | None = None, *,
                     what: str = "output") -> OutputAgreement:
    """Compare ``outputs`` with ``reference`` row by row (both ``[rows, ...]``, flattened per
    row) by cosine similarity, in float64.

    >>> output_agreement(torch.eye(2), torch.eye(2), ["a", "b"]).min
    1.0
    """
    if not (isinstance(reference, torch.Tensor) and isinstance(outputs, torch.Tensor)):
        raise TypeError("reference and outputs must be tensors of the same shape")
    if reference.shape != outputs.shape or reference.dim() == 0 or reference.shape[0] == 0:
        raise ValueError(f"reference and outputs must have the same shape with at least one row; got "
                         f"{list(reference.shape)} and {list(outputs.shape)}")
    rows = reference.shape[0]
    labels = [f"row {i}" for i in range(rows)] if labels is None else [str(label) for label in labels]
    if len(labels) != rows:
        raise ValueError(f"labels must name each of the {rows} rows; got {len(labels)} labels")
    a = reference.detach().reshape(rows, -1).double().cpu()
    b = outputs.detach().reshape(rows, -1).double().cpu()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30)
    return OutputAgreement(tuple(labels), tuple(float(c) for c in cos), what)


@as_table.register
def _table(report: OutputAgreement) -> Table:
    chips = [Cell(f"{len(report.cosines)} samples"),
             Cell(f"mean cosine {report.mean:.5f}", tone=cosine_level(report.mean)),
             Cell(f"min cosine {report.min:.5f}", tone=cosine_level(report.min))]
    rows = [[Cell(label), Cell(f"{c:.5f}", tone=cosine_level(c), sort=json_value(c))]
            for label, c in zip(report.labels, report.cosines)]
    return Table(f"OutputAgreement ({report.what} vs float)", chips, [],
                 [Column("Sample"), Column("Cosine", "right")], rows)


@summary_line.register
def _line(report: OutputAgreement) -> str:
    return (f"OutputAgreement({report.what}: {len(report.cosines)} samples, mean cosine {report.mean:.5f}, "
            f"min {report.min:.5f})")


@as_dict.register
def _dict(report: OutputAgreement) -> dict[str, Any]:
    return {"what": report.what, "mean": json_value(report.mean), "min": json_value(report.min),
            "samples": [{"label": label, "cosine": json_value(c)} for label, c in zip(report.labels, report.cosines)]}


@as_records.register
def _records(report: OutputAgreement) -> list[dict[str, Any]]:
    return [{"sample": label, "cosine": c} for label, c in zip(report.labels, report.cosines)]
