"""The mono_quant playground: a marimo app (``mono-quant playground`` or
``python -m mono_quant.playground``). Pick a model and the options; the report, the plots and
the output agreement follow. Every number comes from the library (``dynamic_quantize``,
``mono_quant.plot``, ``mono_quant.playground.views``); the app only wires the controls.

Arguments after ``--`` (``marimo run app.py -- --model PATH --dtype int4``) set the model
and the first scheme shown.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="mono_quant playground")


@app.cell
def _():
    import marimo as mo

    import mono_quant
    import mono_quant.plot as mqplot
    from mono_quant.config import GROUP_SIZES, SCALE_METHODS
    from mono_quant.playground.views import compare_outputs, layer_names, load_source
    from mono_quant.report.quantization import layer_label
    from mono_quant.report.weights import quantized_names
    return (GROUP_SIZES, SCALE_METHODS, compare_outputs, layer_label, layer_names, load_source, mo, mono_quant,
            mqplot, quantized_names)


@app.cell
def _(mo):
    model_spec = mo.ui.text(value=str(mo.cli_args().get("model") or "minilm"), full_width=True,
                            label="Model: `minilm` (the bundled all-MiniLM-L6-v2) or a checkpoint path "
                                  "(.safetensors, index, folder, .pt / .bin state_dict)")
    mo.vstack([mo.md("# mono_quant playground\nQuantize a model, read the report, look at the weights."),
               model_spec])
    return (model_spec,)


@app.cell
def _(load_source, mo, model_spec):
    try:
        with mo.status.spinner(title="Loading the model ..."):
            source = load_source(model_spec.value)
    except (OSError, ValueError, TypeError) as _exc:
        mo.stop(True, mo.callout(mo.md(f"**Cannot load `{model_spec.value}`**: {_exc}"), kind="danger"))
    return (source,)


@app.cell
def _(GROUP_SIZES, SCALE_METHODS, layer_names, mo, source):
    _first = str(mo.cli_args().get("dtype") or "int8")
    dtype = mo.ui.dropdown(["int8", "int4", "fp16"], value=_first if _first in ("int8", "int4", "fp16") else "int8",
                           label="scheme")
    group_size = mo.ui.dropdown([str(g) for g in GROUP_SIZES], value="128", label="group size (int4)")
    symmetric = mo.ui.switch(value=True, label="symmetric")
    per_channel = mo.ui.switch(value=True, label="per channel (int8)")
    scale_method = mo.ui.dropdown(list(SCALE_METHODS), value="mse", label="scale method (int4)")
    skip = mo.ui.multiselect(layer_names(source.model), label="keep in float")
    mo.vstack([mo.md(f"**{source.title}**"),
               mo.hstack([dtype, group_size, scale_method, symmetric, per_channel], justify="start", gap=1.5),
               skip])
    return dtype, group_size, per_channel, scale_method, skip, symmetric


@app.cell
def _(dtype, group_size, mo, mono_quant, per_channel, scale_method, skip, source, symmetric):
    with mo.status.spinner(title=f"Quantizing to {dtype.value} ..."):
        qmodel, info = mono_quant.dynamic_quantize(
            source.model, dtype.value, group_size=int(group_size.value), symmetric=symmetric.value,
            per_channel=per_channel.value, scale_method=scale_method.value, modules_to_not_convert=list(skip.value))
    info
    return info, qmodel


@app.cell
def _(compare_outputs, mo, qmodel, source):
    with mo.status.spinner(title="Comparing outputs with the float model ..."):
        agreement = compare_outputs(source, qmodel)
    (agreement if agreement is not None else
     mo.md("_A checkpoint file is a state_dict: there is no forward to run, so only the per-layer weight "
           "SQNR above tells the accuracy._"))
    return (agreement,)


@app.cell
def _(info, mo, mqplot):
    _sqnr = mqplot.sqnr(info) if any(l.sqnr_db is not None for l in info.layers.values()) else mo.md("_no SQNR_")
    mo.hstack([_sqnr, mqplot.sizes(info)], widths=[3, 2], align="start")
    return


@app.cell
def _(info, layer_label, mo, qmodel, quantized_names, source):
    _names = quantized_names(source.model, qmodel)
    mo.stop(not _names, mo.md("_No layer was quantized: nothing to plot per layer._"))
    _measured = [info.layers[n] for n in _names if n in info.layers and info.layers[n].sqnr_db is not None]
    _worst = min(_measured, key=lambda l: l.sqnr_db).name if _measured else _names[0]
    layer = mo.ui.dropdown({layer_label(n): n for n in _names}, value=layer_label(_worst), searchable=True,
                           label="layer (the lowest SQNR first shown)")
    layer
    return (layer,)


@app.cell
def _(layer, mo, mqplot, qmodel, source):
    _views = {"weights vs grid": mqplot.weight_histogram(source.model, qmodel, layer.value),
              "error": mqplot.error(source.model, qmodel, layer.value)}
    try:
        _views["scales"] = mqplot.scales(source.model, qmodel, layer.value)
    except ValueError as _exc:  # a cast (fp16) layer has no scales
        _views["scales"] = mo.md(f"_{_exc}_")
    mo.ui.tabs(_views)
    return


if __name__ == "__main__":
    app.run()
