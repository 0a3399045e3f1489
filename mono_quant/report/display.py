"""How a report object shows itself: ``ReportDisplay`` and the four builders it dispatches to.

A report class gets its notebook display by subclassing ``ReportDisplay`` (and, being a
dataclass, by passing ``repr=False`` so the dataclass keeps the one-line ``__repr__``):

    @dataclass(repr=False)
    class GPTQReport(ReportDisplay): ...

and one module of builders registered for its type, listed in ``BUILDER_MODULES``:

    @as_table.register
    def _(report: GPTQReport) -> Table: ...          # _repr_html_ / _repr_markdown_
    @summary_line.register
    def _(report: GPTQReport) -> str: ...            # __repr__
    @as_dict.register
    def _(report: GPTQReport) -> dict: ...           # to_dict (JSON-serializable)
    @as_records.register
    def _(report: GPTQReport) -> list[dict]: ...     # to_dataframe (one dict per row)

The builders are imported on first use, not when this module is imported: the report
classes live in lower layers (``mono_quant.info``) that import this module, and the builders
import them back.

>>> info._repr_html_().startswith('<div class="mq-report">')
True
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from typing import Any

from .table import Table

# The modules whose import registers builders (``mono_quant.report.<name>``).
BUILDER_MODULES = ("quantization", "validation", "calibration", "agreement")


@functools.singledispatch
def as_table(report: Any) -> Table:
    """The ``Table`` that draws ``report`` (HTML and Markdown).

    >>> as_table(info).rows[0][0].text
    'fc1'
    """
    raise TypeError(_unregistered(report, "as_table"))


@functools.singledispatch
def summary_line(report: Any) -> str:
    """The one-line ``repr`` of ``report``."""
    raise TypeError(_unregistered(report, "summary_line"))


@functools.singledispatch
def as_dict(report: Any) -> dict[str, Any]:
    """``report`` as plain dicts, lists, strings and numbers (``json.dumps`` takes it as is;
    non-finite numbers are the strings "inf", "-inf" and "nan", as in mono_quant's files)."""
    raise TypeError(_unregistered(report, "as_dict"))


@functools.singledispatch
def as_records(report: Any) -> list[dict[str, Any]]:
    """One flat dict per row of ``report``'s table (the rows of ``to_dataframe``)."""
    raise TypeError(_unregistered(report, "as_records"))


def _unregistered(report: Any, what: str) -> str:
    return (f"no {what} builder for {type(report).__name__}; register one with "
            f"@mono_quant.report.display.{what}.register")


@functools.cache
def load_builders() -> None:
    """Import the builder modules once (each registers its builders on import)."""
    for name in BUILDER_MODULES:
        importlib.import_module(f"{__package__}.{name}")


class ReportDisplay:
    """Rich display for a report object: ``_repr_html_`` (Jupyter, marimo, VS Code),
    ``_repr_markdown_``, a one-line ``__repr__``, ``to_dict()`` and ``to_dataframe()``.
    ``str(report)`` stays the class's own plain-text table.

    >>> info                  # as the last line of a notebook cell: a coloured table
    >>> info.to_dict()["layers"][0]["sqnr_db"]
    41.2
    """

    __slots__ = ()

    def __repr__(self) -> str:
        load_builders()
        return summary_line(self)

    def _repr_html_(self) -> str:
        load_builders()
        return as_table(self).to_html()

    def _repr_markdown_(self) -> str:
        load_builders()
        return as_table(self).to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """Everything the report holds as JSON-serializable dicts, lists, strings and numbers
        (non-finite numbers as "inf", "-inf", "nan").

        >>> json.dumps(info.to_dict())
        """
        load_builders()
        return as_dict(self)

    def to_dataframe(self) -> Any:
        """One row per line of the report's table, as a ``pandas.DataFrame`` (needs pandas:
        ``pip install 'mono_quant[notebook]'``). Numbers stay numbers (inf, NaN included).

        >>> info.to_dataframe().sort_values("sqnr_db").head()
        """
        try:
            import pandas as pd
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "to_dataframe needs pandas, which is not installed: pip install pandas "
                "(or pip install 'mono_quant[notebook]'); to_dict() works without it", name="pandas"
            ) from exc
        load_builders()
        return pd.DataFrame.from_records(as_records(self))


def json_value(value: Any) -> Any:
    """``value`` made JSON-serializable: non-finite floats become "inf" / "-inf" / "nan",
    tuples lists, torch dtypes and types their names, anything else unknown its ``str``.

    >>> json_value({"sqnr": float("inf"), "shape": (2, 3)})
    {'sqnr': 'inf', 'shape': [2, 3]}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy and torch integers too
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [json_value(v) for v in items]
    if isinstance(value, type):
        return value.__name__
    return str(value).removeprefix("torch.")
