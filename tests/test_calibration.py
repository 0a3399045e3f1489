"""calibrate(): every calib_data form, sample counting, the held-back batch, hooks and flags
restored whatever happens, the progress bar."""

from __future__ import annotations

import collections
import copy
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mono_quant import CalibrationStats, calibrate
from mono_quant._calib_data import Batch
from mono_quant.calibration import run_calibration, select_layers, static_config

from helpers import SharedLog, assert_same_snapshot, snapshot


class Recorder(nn.Module):
    """Two Linear layers; remembers the rows, training flag and grad mode of each call (of
    the model or of any copy of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 8)
        self.calls: list[tuple[int, bool, bool]] = SharedLog()

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        y = self.fc2(self.act(self.fc1(x)))
        return y if scale is None else y * scale


def batches(n: int = 4, rows: int = 10) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(rows, 16, generator=gen) * (i + 1) for i in range(n)]


def ranges(stats: CalibrationStats) -> dict[str, tuple[float, float]]:
    return {name: layer.range for name, layer in stats.layers.items()}


def cal(model, data, **options) -> CalibrationStats:
    options.setdefault("min_params", 0)
    options.setdefault("progress", False)
    return calibrate(model, data, **options)


# ---- every form of calib_data gives the same ranges -------------------------------------------

def forms(data: list[torch.Tensor]):
    labels = [torch.zeros(b.shape[0], dtype=torch.long) for b in data]
    everything = torch.cat(data)
    return {
        "list of tensors": data,
        "tuple of tensors": tuple(data),
        "generator": (b for b in data),
        "(input, target) tuples": list(zip(data, labels)),
        "[input, target] lists": [[b, t] for b, t in zip(data, labels)],
        "dicts of kwargs": [{"x": b} for b in data],
        "UserDict (like BatchEncoding)": [collections.UserDict(x=b) for b in data],
        "DataLoader": DataLoader(TensorDataset(everything, torch.cat(labels)), batch_size=10),
        "one tensor": everything,
        "one dict": {"x": everything},
    }


@pytest.mark.parametrize("form", list(forms(batches())))
def test_every_input_form_sees_the_same_data(backend, form):
    data = batches()
    model = Recorder()
    expected = ranges(cal(copy.deepcopy(model), data))
    stats = cal(model, forms(data)[form])
    assert ranges(stats) == expected
    assert stats.num_samples == 40 and set(stats.layers) == {"fc1", "fc2"}


def test_dict_batches_pass_every_keyword_and_cut_only_batch_tensors():
    model = Recorder()
    data = [{"x": b, "scale": torch.tensor(2.0)} for b in batches(2, 10)]
    stats = cal(model, data, num_samples=15)
    assert [rows for rows, _, _ in model.calls] == [10, 5]  # the second batch is cut to 5 rows
    assert stats.num_samples == 15 and stats.num_batches == 2
    assert stats.holdout.rows == 5 and stats.holdout.kwargs["scale"].shape == ()


# ---- sample counting and the held-back batch --------------------------------------------------

def test_num_samples_counts_rows_and_cuts_the_last_batch():
    model = Recorder()
    stats = cal(model, batches(4, 10), num_samples=25)
    assert [rows for rows, _, _ in model.calls] == [10, 10, 5]
    assert (stats.num_samples, stats.num_batches) == (25, 3)
    # the rest of the cut batch is held back, unseen by the observers
    assert stats.holdout.rows == 5 and not stats.holdout_is_calibration
    assert torch.equal(stats.holdout.args[0], batches(4, 10)[2][5:])


def test_the_next_batch_is_held_back():
    stats = cal(Recorder(), batches(4, 10), num_samples=20)
    assert torch.equal(stats.holdout.args[0], batches(4, 10)[2]) and not stats.holdout_is_calibration


def test_when_data_runs_out_the_last_batch_stands_in():
    model = Recorder()
    stats = cal(model, batches(3, 10))  # default num_samples=150 > 30
    assert stats.num_samples == 30 and stats.holdout_is_calibration
    assert torch.equal(stats.holdout.args[0], batches(3, 10)[2])


def test_default_is_150_samples():
    model = Recorder()
    stats = cal(model, batches(20, 10))
    assert stats.num_samples == 150 and sum(rows for rows, _, _ in model.calls) == 150


def test_holdout_is_capped():
    stats = cal(Recorder(), torch.randn(300, 16), num_samples=100)
    assert stats.holdout.rows == 32


def test_batch_split_keeps_non_batch_values():
    batch = Batch.from_item({"x": torch.zeros(6, 3), "mask": torch.ones(6), "bias": torch.ones(3), "flag": True})
    head, tail = batch.split(4)
    assert head.rows == 4 and tail.rows == 2
    assert head.kwargs["x"].shape == (4, 3) and tail.kwargs["mask"].shape == (2,)
    assert head.kwargs["bias"].shape == (3,) and tail.kwargs["flag"] is True
    assert batch.split(6) == (batch, None)


# ---- the model is left as it was -----------------------------------------------------------------

def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_runs_in_eval_without_grad_and_restores_flags():
    model = Recorder().train()
    model.fc2.eval()  # mixed flags come back exactly
    before = snapshot(model)
    cal(model, batches(2))
    assert len(model.calls) == 2 and all(not training and not grad for _, training, grad in model.calls)
    assert model.training and model.fc1.training and not model.fc2.training
    assert no_hooks(model)
    assert_same_snapshot(before, snapshot(model))


class FailsOnThirdBatch(Recorder):
    def forward(self, x, scale=None):
        if len(self.calls) == 2:
            raise RuntimeError("boom on batch 3")
        return super().forward(x, scale)


def test_hooks_and_flags_are_restored_on_error():
    model = FailsOnThirdBatch().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom on batch 3"):
        cal(model, batches(5))
    assert no_hooks(model) and model.training and model.fc1.training
    assert_same_snapshot(before, snapshot(model))


def test_run_calibration_cleans_up_the_model_it_ran_on_error():
    # calibrate runs a copy, but static_quantize returns the copy it calibrated: it must come back clean
    model = FailsOnThirdBatch().train()
    cfg = static_config(None, {"min_params": 0})
    layers, _ = select_layers(model, cfg)
    with pytest.raises(RuntimeError, match="boom on batch 3"):
        run_calibration(model, batches(5), layers, cfg, progress=False)
    assert no_hooks(model) and model.training and model.fc1.training


class Counting(Recorder):
    """Updates a buffer and an attribute on every call, in any mode, and has hooks of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.last_rows = 0
        self.fc1.register_forward_pre_hook(_observe)
        self.fc2.register_forward_hook(_observe)

    def forward(self, x, scale=None):
        self.seen += 1
        self.last_rows = x.shape[0]
        return super().forward(x, scale)


def _observe(module, *args):
    return None


def test_the_callers_model_is_left_exactly_as_it_was():
    model = Counting().train()
    model.fc2.weight.requires_grad_(False)
    before = snapshot(model)
    stats = cal(model, batches(3))
    assert stats.num_batches == 3 and len(model.calls) == 3  # it ran, on a copy
    assert int(model.seen) == 0 and model.last_rows == 0
    assert_same_snapshot(before, snapshot(model))


class Uncopyable(Recorder):
    def __deepcopy__(self, memo):
        raise RuntimeError("holds a socket")


@pytest.mark.parametrize("model, message", [
    (Uncopyable(), r"could not copy the model \(RuntimeError: holds a socket\); calibrate works on a deep copy"),
    (Recorder().state_dict(), "calibrate needs an nn.Module .*got OrderedDict"),
])
def test_models_calibrate_cannot_run(model, message):
    with pytest.raises(TypeError, match=message):
        cal(model, batches(1))


def test_errors_in_the_data_also_restore():
    def data():
        yield torch.randn(4, 16)
        raise OSError("disk gone")

    model = Recorder().train()
    with pytest.raises(OSError, match="disk gone"):
        cal(model, data())
    assert no_hooks(model) and model.training


def test_nan_activations_name_the_layer():
    model = Recorder()
    with pytest.raises(ValueError, match="calibrating layer 'fc1': .*NaN or Inf"):
        cal(model, [torch.full((2, 16), float("nan"))])
    assert no_hooks(model)


# ---- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data, error, message",
    [
        ([], ValueError, "yielded no samples"),
        ([torch.zeros(0, 16)], ValueError, "yielded no samples"),
        (42, TypeError, "calib_data must be a DataLoader .* got int"),
        ("text", TypeError, "calib_data must be a DataLoader"),
        (["text"], TypeError, "must yield tensors, .* got str"),
        ([()], TypeError, "empty tuple"),
    ],
)
def test_bad_calib_data(data, error, message):
    model = Recorder()
    with pytest.raises(error, match=message):
        cal(model, data)
    assert no_hooks(model)


def test_a_layer_called_without_a_float_tensor_is_reported():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="layer '0' was called with Tensor.*floating-point tensor"):
        cal(model, [torch.ones(2, 4, dtype=torch.long)])
    assert no_hooks(model)


# ---- which layers, and what is recorded ------------------------------------------------------------

def test_layer_selection_follows_the_options():
    model = Recorder()
    assert set(cal(model, batches(1), modules_to_not_convert=["fc2"]).layers) == {"fc1"}
    stats = calibrate(model, batches(1), progress=False)  # default min_params=512: fc2 has 264
    assert set(stats.layers) == {"fc1"} and "fewer than min_params" in stats.skipped["fc2"]


def test_unused_layers_are_listed():
    model = Recorder()
    model.spare = nn.Linear(16, 16)
    stats = cal(model, batches(1))
    assert stats.never_called == ["spare"] and "spare" not in stats.layers
    assert "Never called" in str(stats)


def test_stats_record_ranges_and_calls():
    data = batches(3)
    stats = cal(Recorder(), data)
    fc1 = stats.layers["fc1"]
    seen = torch.cat(data)
    assert (fc1.data_min, fc1.data_max) == (float(seen.min()), float(seen.max())) == fc1.range
    assert fc1.calls == 3 and fc1.observer == "minmax" and fc1.module_type == "Linear" and not fc1.clipped
    text = str(stats)
    assert "fc1" in text and "30 samples in 3 batches" in text


def test_keyword_input_is_observed():
    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(input=x)

    assert cal(KeywordCall(), [torch.ones(2, 4)]).layers["fc"].range == (1.0, 1.0)


# ---- progress bar ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "num_samples, progress, shown",
    [(60, None, True), (50, None, False), (200, False, False), (10, True, True)],
)
def test_progress_bar_shows_above_50_samples(capsys, num_samples, progress, shown):
    calibrate(Recorder(), torch.randn(300, 16), num_samples=num_samples, progress=progress, min_params=0)
    err = capsys.readouterr().err
    assert ("Calibrating" in err) is shown
    if shown:
        assert f"{num_samples}/{num_samples}" in err


def test_no_progress_bar_when_the_data_holds_few_samples(capsys):
    for data in (torch.randn(40, 16), batches(4, 10), DataLoader(TensorDataset(torch.randn(40, 16)), batch_size=8)):
        calibrate(Recorder(), data, min_params=0)  # num_samples=150, but only 40 exist
    assert capsys.readouterr().err == ""
    calibrate(Recorder(), (b for b in batches(4, 10)), min_params=0)  # a generator cannot tell
    assert "Calibrating" in capsys.readouterr().err


def test_plain_progress_bar_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    calibrate(Recorder(), torch.randn(100, 16), num_samples=60, min_params=0)
    err = capsys.readouterr().err
    assert "Calibrating: [" in err and "60/60 samples" in err and err.endswith("\n")
