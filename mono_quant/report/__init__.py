"""Reports for people: rich notebook display of every report object, and the table renderer
behind it.

``QuantizationInfo``, ``LayerInfo``, ``ValidationReport`` and ``CalibrationStats`` subclass
``ReportDisplay``: as the last line of a Jupyter or marimo cell they show a coloured HTML
table; ``repr()`` is one line; ``to_dict()`` is JSON-serializable; ``to_dataframe()`` needs
pandas. Plots are in ``mono_quant.plot`` (the ``plot`` extra). Nothing here imports an
optional package.

>>> from mono_quant.report import Table, Column, Cell
>>> Table("Mine", [Cell("ok", tone="passed")], [], [Column("x")], [[Cell("1")]]).to_html()[:24]
'<div class="mq-report"><'
"""

from .agreement import OutputAgreement, output_agreement
from .display import ReportDisplay, as_dict, as_records, as_table, json_value, summary_line
from .table import TONES, Cell, Column, Table

__all__ = ["ReportDisplay", "Table", "Column", "Cell", "TONES", "as_table", "as_dict", "as_records",
           "summary_line", "json_value", "OutputAgreement", "output_agreement"]
