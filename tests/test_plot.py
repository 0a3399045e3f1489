"""mono_quant.plot: each plot draws what the run measured (bars = SQNRs, grid = the values the
layer can hold, heatmap = its scales, error = w - dequant(w)), on models and state_dicts,
without changing either model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

import mono_quant.plot as mqplot  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mono_quant import LayerInfo, QuantizationInfo, dynamic_quantize  # noqa: E402
from mono_quant.report.weights import layer_weights  # noqa: E402

from helpers import assert_same_snapshot, make_cnn, make_mlp, snapshot  # noqa: E402


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 128), nn.Linear(128, 48))
    with torch.no_grad():
        model[0].weight[3, 5] = 2.0  # one outlier: its group is the worst unit
    return model


def bars(fig: Figure) -> list[Rectangle]:
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_width() > 0 and p.get_height() > 0]


def vlines(ax) -> list[float]:
    return [line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2
            and line.get_xdata()[0] == line.get_xdata()[1]]


def test_sqnr_bars_are_the_measured_sqnr_over_the_bands():
    model = mlp()
    _, info = dynamic_quantize(model, "int4", group_size=32)
    info.add(LayerInfo("exact", "Linear", "int8", "int8", (4, 4), 64, 32, math.inf))
    fig = mqplot.sqnr(info)
    ax = fig.axes[0]
    drawn = list(ax.containers[0])  # the bars, in model order (the bands are patches too)
    measured = [layer for layer in info.layers.values() if layer.sqnr_db is not None]
    assert [t.get_text() for t in ax.get_yticklabels()] == [layer.name for layer in measured]
    for rect, layer in zip(drawn, measured):
        expected = min(layer.sqnr_db, ax.get_xlim()[1])
        assert rect.get_width() == pytest.approx(expected)
        colour = mqplot.TONE_COLOURS[layer.accuracy]
        assert rect.get_facecolor()[:3] == pytest.approx(tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)))
    assert len(drawn) == len(measured)
    assert "inf" in [t.get_text().strip() for t in ax.texts]
    bands = [p for p in ax.patches if p not in drawn]
    assert [p.get_label() for p in bands] == ["critical", "warning", "fair", "good"]
    assert [round(p.get_x() + p.get_width()) for p in bands][:3] == [10, 20, 30]
    assert {10.0, 20.0, 30.0} <= set(vlines(ax))


def test_sqnr_needs_a_measured_run():
    _, info = dynamic_quantize(make_mlp(), compute_sqnr=False)
    with pytest.raises(ValueError, match="compute_sqnr=True"):
        mqplot.sqnr(info)
    with pytest.raises(TypeError, match="needs the QuantizationInfo"):
        mqplot.sqnr({"layers": []})


def test_sizes_sum_bytes_per_layer_type():
    _, info = dynamic_quantize(make_cnn())
    fig = mqplot.sizes(info)
    ax = fig.axes[0]
    types = [t.get_text() for t in ax.get_xticklabels()]
    assert types == list(dict.fromkeys(layer.module_type for layer in info.layers.values()))
    heights = [r.get_height() for r in sorted(bars(fig), key=lambda r: r.get_x())]
    div = 1024.0 if ax.get_ylabel() == "KiB" else 1.0
    expected = []
    for t in types:
        chosen = [layer for layer in info.layers.values() if layer.module_type == t]
        expected += [sum(l.bytes_before for l in chosen) / div, sum(l.bytes_after for l in chosen) / div]
    assert heights == pytest.approx(expected)


@pytest.mark.parametrize("dtype, levels", [("int4", 16), ("int8", 256)])
def test_grid_holds_every_dequantized_value(dtype, levels):
    model = mlp()
    qmodel, _ = dynamic_quantize(model, dtype, group_size=32)
    w = layer_weights(model, qmodel, "0")
    assert w.groups == (2 if dtype == "int4" else 1)
    for row in (0, 3, 95):
        for group in range(w.groups):
            grid = w.grid(row, group)
            assert len(grid) == levels
            _, deq = w.unit(row, group)
            gaps = (deq[:, None] - grid[None, :]).abs().min(dim=1).values
            assert float(gaps.max()) <= 1e-6 * float(grid.abs().max())  # each value is a grid point
    assert w.worst_unit() == (3, 0)  # the outlier's unit


def test_weight_histogram_shows_the_unit_its_grid_and_clipping_range():
    model = mlp()
    before = snapshot(model)
    qmodel, _ = dynamic_quantize(model, "int4", group_size=32)
    q_before = snapshot(qmodel)
    fig = mqplot.weight_histogram(model, qmodel, "0")
    ax = fig.axes[0]
    assert "channel 3, group 0 of 2" in ax.get_title()
    assert sum(r.get_height() for r in bars(fig)) == 32  # the unit's 32 weights
    grid = layer_weights(model, qmodel, "0").grid(3, 0)
    lines = vlines(ax)
    assert len(lines) == 16 + 2 and lines[-2:] == pytest.approx([float(grid[0]), float(grid[-1])])
    fig = mqplot.weight_histogram(model, qmodel, "2", channel=7, group=1, bins=10)
    assert "channel 7, group 1 of 3" in fig.axes[0].get_title() and len(bars(fig)) <= 10
    assert_same_snapshot(before, snapshot(model))
    assert_same_snapshot(q_before, snapshot(qmodel))


def test_weight_histogram_int8_conv_fp16_and_state_dict():
    cnn = make_cnn()
    qcnn, _ = dynamic_quantize(cnn)
    fig = mqplot.weight_histogram(cnn, qcnn, "3")  # a Conv2d: rows of in*kh*kw weights
    assert sum(r.get_height() for r in bars(fig)) == 16 * 3 * 3 and len(vlines(fig.axes[0])) == 256 + 2
    model = mlp()
    qhalf, _ = dynamic_quantize(model, "fp16")
    fig = mqplot.weight_histogram(model, qhalf, "2")
    assert "cast to float16, no grid" in fig.axes[0].get_title() and not vlines(fig.axes[0])
    state = model.state_dict()
    qstate, _ = dynamic_quantize(state, "int4", group_size=64)
    fig = mqplot.weight_histogram(state, qstate, "0", channel=3)
    assert "channel 3, group 0 of 1" not in fig.axes[0].get_title() and "channel 3" in fig.axes[0].get_title()


def test_scales_heatmap_is_the_layer_scales():
    model = mlp()
    qmodel, _ = dynamic_quantize(model, "int4", group_size=32)
    fig = mqplot.scales(model, qmodel, "2")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (128, 3)
    assert torch.equal(torch.as_tensor(image.data), qmodel[2].canonical_weight()["scale"].float())
    q8, _ = dynamic_quantize(model, "int8")
    image = mqplot.scales(model, q8, "3").axes[0].images[0].get_array()
    assert image.shape == (1, 48) and torch.equal(torch.as_tensor(image.data[0]), q8[3].canonical_weight()["scale"])
    qhalf, _ = dynamic_quantize(model, "fp16")
    with pytest.raises(ValueError, match="layer '2' is only cast to float16; it has no scales"):
        mqplot.scales(model, qhalf, "2")


def test_error_histogram_is_w_minus_dequant():
    model = mlp()
    qmodel, info = dynamic_quantize(model, "int8")
    fig = mqplot.error(model, qmodel, "2", bins=50)
    ax = fig.axes[0]
    assert sum(r.get_height() for r in bars(fig)) == 96 * 128
    assert f"SQNR {info.layers['2'].sqnr_db:.1f} dB" in ax.get_title()
    diff = model[2].weight.detach() - qmodel[2].dequantized_weight()
    assert f"max |error| {float(diff.abs().max()):.3g}" in ax.get_title()


def test_layer_plots_name_the_problem():
    model = mlp()
    qmodel, _ = dynamic_quantize(model, "int4", group_size=32)
    with pytest.raises(ValueError, match=r"no quantized layer named 'nope'.*'0', '2', '3'"):
        mqplot.weight_histogram(model, qmodel, "nope")
    with pytest.raises(ValueError, match="no quantized layer named '1'"):  # the ReLU
        mqplot.error(model, qmodel, "1")
    with pytest.raises(ValueError, match=r"channel must be an output row of layer '0', 0 to 95; got 96"):
        mqplot.weight_histogram(model, qmodel, "0", channel=96)
    with pytest.raises(ValueError, match=r"group must be 0 to 1 for layer '0'"):
        mqplot.weight_histogram(model, qmodel, "0", group=2)
    with pytest.raises(ValueError, match="bins must be an integer >= 1"):
        mqplot.error(model, qmodel, "0", bins=0)
    with pytest.raises(TypeError, match="both be nn.Modules or both be state_dicts"):
        mqplot.error(model.state_dict(), qmodel, "0")
    meta = mlp().to("meta")
    with pytest.raises(ValueError, match="the original model has no float weight for layer '0'"):
        mqplot.error(meta, qmodel, "0")


def test_plots_draw_into_a_given_axes():
    model = mlp()
    qmodel, info = dynamic_quantize(model, "int4", group_size=32)
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert mqplot.sqnr(info, ax=axes[0]) is fig
    assert mqplot.error(model, qmodel, "0", ax=axes[1]) is fig
    assert mqplot.weight_histogram(model, qmodel, "0", ax=axes[2]) is fig
    assert all(ax.has_data() for ax in axes)


def test_empty_run_has_no_sizes():
    with pytest.raises(ValueError, match="considered no layer"):
        mqplot.sizes(QuantizationInfo())
