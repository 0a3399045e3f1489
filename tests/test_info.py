"""LayerInfo and QuantizationInfo: accuracy levels, warnings, totals, the printed table."""

from __future__ import annotations

import math

import pytest
from torch import nn

from mono_quant import LayerInfo, QuantizationInfo, dynamic_quantize
from mono_quant.info import ACCURACY_LEVELS, accuracy_level, format_bytes

from helpers import make_mlp


def layer(name="fc", sqnr=40.0, **kw) -> LayerInfo:
    fields = dict(module_type="Linear", scheme="int8 per-channel symmetric", dtype="int8",
                  shape=(8, 4), bytes_before=144, bytes_after=72, sqnr_db=sqnr)
    fields.update(kw)
    return LayerInfo(name, **fields)


@pytest.mark.parametrize(
    "sqnr, level",
    [(-math.inf, "critical"), (9.99, "critical"), (10.0, "warning"), (19.9, "warning"),
     (20.0, "fair"), (29.99, "fair"), (30.0, "good"), (math.inf, "good"), (None, None)],
)
def test_accuracy_levels(sqnr, level):
    assert accuracy_level(sqnr) == level
    assert layer(sqnr=sqnr).accuracy == level


def test_thresholds_live_in_one_table():
    assert ACCURACY_LEVELS == ((10.0, "critical"), (20.0, "warning"), (30.0, "fair"))


def test_low_sqnr_adds_warnings_with_suggestions():
    info = QuantizationInfo()
    info.add(layer("good", 45.0))
    info.add(layer("fair", 25.0))
    info.add(layer("enc.q", 15.0))
    info.add(layer("enc.k", 5.0, details={"group_size": 128}))
    info.add(layer("enc.v", 12.0, details={"per_channel": False}))
    assert info.warnings == [
        "enc.q: SQNR 15.0 dB is warning (good is >= 30 dB); skip it with modules_to_not_convert=['enc.q']",
        "enc.k: SQNR 5.0 dB is critical (good is >= 30 dB); skip it with modules_to_not_convert=['enc.k'], "
        "or use group_size=64, or use dtype='int8' instead of 'int4'",
        "enc.v: SQNR 12.0 dB is warning (good is >= 30 dB); skip it with modules_to_not_convert=['enc.v'], "
        "or use per_channel=True",
    ]


def test_skipped_layers_and_totals():
    info = QuantizationInfo()
    assert info.compression_ratio == 1.0 and info.total_bytes_before == 0
    info.add(layer("a"))
    info.add(layer("b", None, scheme="", dtype="float32", bytes_after=144, status="skipped", reason="too small"))
    assert info.skipped == {"b": "too small"} and info.quantized == ["a"]
    assert (info.total_bytes_before, info.total_bytes_after) == (288, 216)
    assert info.compression_ratio == pytest.approx(288 / 216)
    with pytest.raises(ValueError, match="layer 'a' is already recorded"):
        info.add(layer("a"))


def test_layer_info_validation():
    with pytest.raises(ValueError, match="status must be one of 'quantized', 'skipped'; got 'done'"):
        layer(status="done")
    with pytest.raises(ValueError, match="layer 'fc' is skipped but has no reason"):
        layer(status="skipped")
    with pytest.raises(ValueError, match="byte counts must be >= 0"):
        layer(bytes_after=-1)


def test_str_is_a_readable_table():
    _, info = dynamic_quantize(make_mlp())
    info.add(layer("extra", 15.0))
    text = str(info)
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Type", "Scheme", "Size", "SQNR", "Status"]
    row = next(line for line in lines if line.startswith("0 "))
    assert "Linear" in row and "int8 per-channel symmetric" in row and "32.5 KiB -> 9.5 KiB" in row
    assert f"{info.layers['0'].sqnr_db:.1f} dB" in row and "quantized (good)" in row
    norm = next(line for line in lines if line.startswith("2 "))
    assert "LayerNorm" in norm and "skipped: LayerNorm stays float" in norm
    assert info.total_bytes_before == (64 * 128 + 128 + 2 * 128 + 128 * 32 + 32) * 4 + 144
    assert info.total_bytes_after == (64 * 128 + 3 * 128 * 4) + 2 * 128 * 4 + (128 * 32 + 3 * 32 * 4) + 72
    assert "Total: 49.8 KiB -> 14.9 KiB (3.33x), 3 of 4 layers quantized" in text
    assert "Warnings (1):\n  - extra: SQNR 15.0 dB is warning" in text


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB"
    ]


# ---- honest bits per weight ---------------------------------------------------------------------

def test_bits_per_weight_counts_scales_zero_points_and_fallbacks_as_stored():
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 96), nn.Linear(96, 64))
    _, info = dynamic_quantize(model, "int4", group_size=128, min_params=0)
    # 256 and 128 inputs: INT4 g128; 96 inputs: INT8 per channel (a float32 scale and an int32 zero point per row)
    weights = {"0": 256 * 128, "2": 128 * 96, "3": 96 * 64}
    bits = {"0": 4 + 24 / 128, "2": 4 + 24 / 128, "3": 8 + 64 / 96}
    assert {n: info.layers[n].details["bits_per_weight"] for n in weights} == pytest.approx(bits)
    expected = sum(bits[n] * weights[n] for n in weights) / sum(weights.values())
    assert info.bits_per_weight == pytest.approx(expected)
    assert f"{expected:.2f} bits per weight (scales and zero points included)" in str(info)
    assert not any("does not divide" in w for w in info.warnings)  # one of three fell back: not most
    _, int8 = dynamic_quantize(model, "int8", min_params=0, per_channel=False)
    assert int8.bits_per_weight == pytest.approx(
        sum((8 + 64 / weights[n]) * weights[n] for n in weights) / sum(weights.values()))
    assert QuantizationInfo().bits_per_weight is None


def test_a_group_size_that_makes_most_layers_fall_back_is_a_warning():
    """MiniLM's shape: 384- and 1536-wide inputs, so group_size=256 stores nearly all as INT8."""
    model = nn.Sequential(nn.Linear(384, 1536), nn.ReLU(), nn.Linear(1536, 384), nn.Linear(384, 384))
    _, info = dynamic_quantize(model, "int4", group_size=256, validate=False)
    assert info.bits_per_weight > 6
    assert info.warnings == [
        f"group_size=256 does not divide the in_features of 2 of 3 Linear layers (384 wide): they were stored "
        f"as INT8, so the model stores {info.bits_per_weight:.2f} bits per weight instead of about 4.09; "
        "use group_size=128 (divides the in_features of every one of them)"
    ]
    _, info = dynamic_quantize(model, "int4", group_size=128, validate=False)
    assert info.bits_per_weight == pytest.approx(4 + 24 / 128) and not info.warnings
