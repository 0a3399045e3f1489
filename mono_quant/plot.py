"""``mono_quant.plot``: one call per plot, each returning a matplotlib Figure (needs the
``plot`` extra: ``pip install 'mono_quant[plot]'``). The code is in ``mono_quant.report.plot``.

>>> import mono_quant.plot
>>> mono_quant.plot.sqnr(info).savefig("sqnr.png")
"""

from .report.plot import TONE_COLOURS, error, scales, sizes, sqnr, weight_histogram

__all__ = ["sqnr", "sizes", "weight_histogram", "scales", "error", "TONE_COLOURS"]
