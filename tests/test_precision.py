"""Mixed precision: the budget planner (order by loss per saved bit, the budget kept, layers that
do not fit skipped, zero sensitivity never kept; with options: finer INT4 groups or INT8 by loss
removed per extra bit, along each layer's convex hull), the sensitivity measurement, the layer
output error the options are estimated with, and gptq_quantize(max_bits_per_weight=...) end to
end with its report."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mono_quant import gptq_quantize
from mono_quant import load_quantized, save_quantized
from mono_quant.calib import LayerChoice, PrecisionOption, PrecisionPlan
from mono_quant.calib.alternatives import relative_output_error
from mono_quant.calib.modules import parent_slots
from mono_quant.calib.sensitivity import measure_sensitivity, plan_precision
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4
from mono_quant._calib_data import Batch


def choice(name: str, weights: int, sensitivity: float, g: int = 128) -> LayerChoice:
    return LayerChoice(name, weights, sensitivity, 4 + 24 / g, 8.0 + 64 / 256)


# ---- the planner ----------------------------------------------------------------------------

def test_plan_keeps_the_worst_loss_per_saved_bit_first_within_the_budget():
    layers = [choice("a", 1000, 1.0), choice("b", 1000, 3.0), choice("c", 4000, 4.4), choice("d", 1000, 2.0)]
    # all INT4: 4.1875; each 1000-weight layer in INT8 adds 4.0625 * 1000 / 7000 = 0.580 bits
    plan = plan_precision(layers, 0.0, 0, 5.4, rows=16)
    assert [c.name for c in sorted(plan.layers.values(), key=lambda c: c.rank)] == ["b", "d", "c", "a"]
    assert plan.int8_layers == ["b", "d"]  # then c (4000 weights) and a do not fit
    assert plan.bits_per_weight <= 5.4 and plan.all_int4 == pytest.approx(4.1875)
    assert plan.bits_per_weight == pytest.approx(4.1875 + 2 * 4.0625 * 1000 / 7000)


def test_plan_skips_a_layer_that_does_not_fit_and_takes_a_smaller_one():
    layers = [choice("big", 6000, 6.1), choice("small", 1000, 0.5)]
    plan = plan_precision(layers, 0.0, 0, 4.9, rows=16)  # big alone would add 3.48 bits
    assert plan.int8_layers == ["small"]


def test_plan_counts_the_other_quantized_layers_and_never_keeps_a_harmless_layer():
    layers = [choice("a", 1000, 0.0), choice("b", 1000, 1e-3)]
    # 2000 fixed weights already at 8.25 bits (INT8 fallbacks): the average starts at 6.22
    plan = plan_precision(layers, 2000 * 8.25, 2000, 32.0, rows=16)
    assert plan.all_int4 == pytest.approx((2000 * 8.25 + 2000 * 4.1875) / 4000)
    assert plan.int8_layers == ["b"]
    assert plan_precision(layers, 2000 * 8.25, 2000, 4.0, rows=16).int8_layers == []


def options_choice(name: str, weights: int, losses: dict[str, float]) -> LayerChoice:
    """A layer with options "g128", "g64", "g32", "int8" at the given losses."""
    bits = {"g128": 4.1875, "g64": 4.375, "g32": 4.75, "int8": 8.25}
    options = tuple(PrecisionOption("int8", None, bits[k], v) if k == "int8" else
                    PrecisionOption("int4", int(k[1:]), bits[k], v) for k, v in losses.items())
    return LayerChoice(name, weights, losses["g128"], 4.1875, 8.25, options=options)


def test_plan_with_options_finds_the_least_loss_within_the_budget():
    # a: finer groups halve its loss for 0.19 bits; b: only INT8 helps (finer groups do not)
    a = options_choice("a", 1000, {"g128": 1.0, "g64": 0.5, "g32": 0.4, "int8": 0.01})
    b = options_choice("b", 1000, {"g128": 1.0, "g64": 1.0, "g32": 1.0, "int8": 0.0})
    plan = plan_precision([a, b], 0.0, 0, 4.3, rows=8)  # room for 0.225 bits on average
    assert (plan.layers["a"].choice, plan.layers["a"].group_size) == ("int4", 64)
    assert plan.layers["b"].choice == "int4" and plan.layers["b"].group_size == 128
    assert plan.bits_per_weight == pytest.approx((4.375 + 4.1875) / 2)
    # a larger budget: a at g64 and b in INT8 (loss 0.5) fit; a greedy walk by loss per bit would
    # take a's g64 and g32 first, find no room left for b's INT8 and end with a in INT8 (loss 1.01)
    plan = plan_precision([a, b], 0.0, 0, 6.4, rows=8)
    assert plan.layers["b"].choice == "int8" and plan.layers["a"].label == "int4 g64"
    assert plan.int8_layers == ["b"] and plan.layers["b"].rank == 2 and plan.layers["a"].rank == 1
    assert "1 layer(s) kept in INT8, 1 in INT4 with finer groups" in str(plan)


def test_plan_with_options_never_picks_an_option_that_costs_more_and_loses_more():
    # g64 costs more than g128 and loses more: never chosen
    c = options_choice("c", 1000, {"g128": 1.0, "g64": 1.2, "g32": 0.2, "int8": 0.1})
    plan = plan_precision([c], 0.0, 0, 100.0, rows=8)
    assert plan.layers["c"].choice == "int8"
    plan = plan_precision([c], 0.0, 0, 5.0, rows=8)
    assert plan.layers["c"].label == "int4 g32" and plan.bits_per_weight == pytest.approx(4.75)
    plan = plan_precision([c], 0.0, 0, 4.5, rows=8)  # g32 does not fit: nothing else is cheaper
    assert plan.layers["c"].label == "int4 g128"


def test_relative_output_error_is_the_layer_output_error_over_the_calibration_rows():
    torch.manual_seed(0)
    w, x = torch.randn(24, 32), torch.randn(100, 32)
    w_hat = w + 0.05 * torch.randn(24, 32)
    h = x.double().T @ x.double()
    want = float((x @ (w - w_hat).T).pow(2).sum() / (x @ w.T).pow(2).sum())
    assert relative_output_error(w, w_hat, h) == pytest.approx(want, rel=1e-4)
    assert relative_output_error(w, w, h) == 0.0


def test_plan_table():
    plan = plan_precision([choice("enc.fc1", 1000, 2.0), choice("enc.fc2", 1000, 0.5)], 0.0, 0, 6.3, rows=8)
    text = str(plan)
    assert "Mixed precision (max_bits_per_weight=6.3)" in text and "on 8 calibration rows" in text
    lines = text.splitlines()
    assert lines[1].split() == ["Layer", "Weights", "Sensitivity", "Per", "saved", "bit", "Rank", "Choice"]
    assert "enc.fc1" in lines[3] and lines[3].rstrip().endswith("INT8")
    assert lines[4].rstrip().endswith("INT4")
    assert lines[-1] == "1 layer(s) kept in INT8: 6.219 bits per weight (all INT4: 4.188; budget 6.3)"
    assert isinstance(plan, PrecisionPlan) and math.isinf(LayerChoice("x", 0, 1.0, 4.0, 8.0).loss_per_saved_bit)


# ---- sensitivity ----------------------------------------------------------------------------

def test_sensitivity_is_the_output_error_with_one_layer_quantized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)).eval()
    x = torch.randn(16, 32)
    batches = [Batch(args=(x,), rows=16)]
    names = ("0", "2")
    noisy = {name: QuantizedLinearInt4.from_float(model[int(name)], 32) for name in names}
    floats = {name: model[int(name)] for name in names}
    result = measure_sensitivity(model, parent_slots(model), floats, noisy, batches)
    with torch.no_grad():
        y = model(x)
        for name in names:
            alone = nn.Sequential(*(noisy[str(i)] if str(i) == name else m for i, m in enumerate(model)))(x)
            assert result[name] == pytest.approx(float((alone - y).pow(2).sum() / y.pow(2).sum()), rel=1e-6)
            assert result[name] > 0
    assert all(model[int(name)] is floats[name] for name in names), "the float layers must be back in place"


# ---- end to end ------------------------------------------------------------------------------

class Tower(nn.Module):
    """Four Linear layers; the third has one huge weight per group of 128, so INT4 rounds most
    of its other weights to zero: by far the most sensitive layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*(nn.Linear(128, 128) for _ in range(4)))
        with torch.no_grad():
            self.layers[2].weight[:, 0] = 3.0

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_gptq_with_a_budget_keeps_the_most_sensitive_layer_in_int8():
    model = Tower().eval()
    data = [torch.randn(16, 128) for _ in range(4)]
    budget = 4.1875 + (8.5 - 4.1875) / 4 + 0.01  # room for exactly one of four layers in INT8
    q_model, info = gptq_quantize(model, data, group_size=128, min_params=0, progress=False,
                                  max_bits_per_weight=budget, sensitivity_samples=32)
    plan = info.precision_plan
    assert plan.int8_layers == ["layers.2"] and plan.rows == 32
    assert isinstance(q_model.layers[2], QuantizedLinear) and isinstance(q_model.layers[0], QuantizedLinearInt4)
    assert info.bits_per_weight == pytest.approx(plan.bits_per_weight) and info.bits_per_weight <= budget
    record = info.layers["layers.2"]
    assert record.scheme.endswith("(mixed precision)") and record.details["precision"] == "int8"
    assert record.details["precision_rank"] == 1 and record.details["sensitivity"] > 0
    assert info.layers["layers.0"].details["precision"] == "int4"
    assert "Mixed precision (max_bits_per_weight=" in str(info) and info.validation.passed


def test_a_budget_below_all_int4_says_so():
    _, info = gptq_quantize(Tower().eval(), [torch.randn(16, 128)] * 3, group_size=128, min_params=0,
                            progress=False, max_bits_per_weight=4.0, validate=False)
    assert info.precision_plan.int8_layers == []
    assert any("max_bits_per_weight=4 is below the 4.188 bits per weight" in w for w in info.warnings)


def test_gptq_budget_may_pick_finer_int4_groups_and_the_file_keeps_them(tmp_path):
    model = Tower().eval()
    data = [torch.randn(16, 128) for _ in range(4)]
    budget = 4.1875 + (4.75 - 4.1875) / 4 * 3 + 0.01  # room for g32 on three of four layers, no INT8
    q_model, info = gptq_quantize(model, data, group_size=128, min_params=0, progress=False,
                                  max_bits_per_weight=budget, sensitivity_samples=32)
    plan = info.precision_plan
    finer = [name for name, c in plan.layers.items() if c.choice == "int4" and c.group_size != 128]
    assert finer and plan.int8_layers == []
    for name in finer:
        layer = q_model.get_submodule(name)
        assert isinstance(layer, QuantizedLinearInt4) and layer.group_size == plan.layers[name].group_size
        record = info.layers[name]
        assert record.details["group_size"] == layer.group_size and record.details["precision"] == "int4"
        assert record.scheme.endswith("(mixed precision)")
    assert info.bits_per_weight == pytest.approx(plan.bits_per_weight) and info.bits_per_weight <= budget
    x = torch.randn(8, 128)
    save_quantized(q_model, tmp_path / "m.safetensors", info)
    loaded = load_quantized(tmp_path / "m.safetensors", Tower())
    with torch.no_grad():
        assert torch.equal(loaded(x), q_model(x))
