"""Observers: the ranges they produce, the running histogram behind two of them, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import Observer, QuantizationConfig, calibrate, get_observer, register_observer
from mono_quant import _kernels as K
from mono_quant import observers
from mono_quant._histogram import RunningHistogram
from mono_quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    normalize_observer_name,
    observer_names,
)


def feed(observer: Observer, *batches: torch.Tensor) -> tuple[float, float]:
    for batch in batches:
        observer.observe(batch)
    return observer.range()


def test_minmax_is_the_running_extremes(backend):
    batches = [torch.randn(64, 8) * s for s in (1.0, 3.0, 0.5)]
    everything = torch.cat(batches)
    assert feed(MinMaxObserver(), *batches) == (float(everything.min()), float(everything.max()))


def test_moving_average_follows_momentum(backend):
    obs = MovingAverageMinMaxObserver(QuantizationConfig(momentum=0.25))
    low, high = feed(obs, torch.tensor([-4.0, 8.0]), torch.tensor([0.0, 4.0]), torch.tensor([-8.0, 0.0]))
    # min: -4 -> -3 -> -4.25; max: 8 -> 7 -> 5.25
    assert (low, high) == (pytest.approx(-4.25), pytest.approx(5.25))
    assert feed(MovingAverageMinMaxObserver(), torch.tensor([1.0, 2.0])) == (1.0, 2.0)


def test_percentile_matches_exact_quantiles(backend):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    obs = PercentileObserver(QuantizationConfig(percentile=99.0))
    low, high = feed(obs, *x.chunk(7))
    width = obs.histogram.width
    assert low == pytest.approx(float(torch.quantile(x, 0.01)), abs=width)
    assert high == pytest.approx(float(torch.quantile(x, 0.99)), abs=width)


def test_percentile_clips_rare_outliers_but_never_widens(backend):
    x = torch.cat([torch.rand(100_000), torch.tensor([50.0])])
    low, high = feed(PercentileObserver(), x)
    assert 0.0 <= low and high < 1.01
    full = feed(PercentileObserver(QuantizationConfig(percentile=100.0)), x)
    assert full == (float(x.min()), 50.0)
    assert feed(PercentileObserver(), torch.full((10,), 2.5)) == (2.5, 2.5)


def laplace(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return torch.empty(n).exponential_(generator=gen) * signs


def round_trip_error(x: torch.Tensor, rng: tuple[float, float], symmetric: bool) -> float:
    qdtype = torch.int8 if symmetric else torch.uint8
    scale, zp = K.qparams(torch.tensor([rng[0]]), torch.tensor([rng[1]]), qdtype, symmetric=symmetric)
    return float(((K.dequantize(K.quantize(x, scale, zp, qdtype=qdtype), scale, zp) - x) ** 2).sum())


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_clips_heavy_tails_to_a_smaller_error(backend, symmetric):
    x = laplace(200_000, seed=1)
    config = QuantizationConfig(activation_symmetric=symmetric)
    low, high = feed(MSEObserver(config), x)
    assert float(x.min()) < low < -5.0 and 5.0 < high < float(x.max())
    mse_error = round_trip_error(x, (low, high), symmetric)
    assert mse_error < 0.9 * round_trip_error(x, feed(MinMaxObserver(), x), symmetric)
    # within a few percent of the best symmetric clip found by brute force
    best = min(round_trip_error(x, (-a, a), symmetric) for a in torch.linspace(2.0, 13.0, 56).tolist())
    assert mse_error < 1.05 * best


def test_mse_keeps_the_range_of_light_tails(backend):
    uniform = torch.rand(50_000, generator=torch.Generator().manual_seed(2)) * 2 - 1
    low, high = feed(MSEObserver(), uniform)
    assert low < -0.95 and high > 0.95
    one_outlier = torch.cat([torch.randn(20_000), torch.tensor([40.0])])  # clipping it costs 30^2
    assert feed(MSEObserver(), one_outlier)[1] == 40.0


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse"])
def test_every_observer_needs_data_and_refuses_nan(backend, name):
    obs = get_observer(name)(QuantizationConfig())
    with pytest.raises(RuntimeError, match="seen no data"):
        obs.range()
    obs.observe(torch.empty(0))  # an empty tensor adds nothing
    with pytest.raises(ValueError, match="NaN or Inf"):
        obs.observe(torch.tensor([1.0, float("nan")]))


# ---- the running histogram -----------------------------------------------------------------------

def test_histogram_grows_without_losing_counts(backend):
    gen = torch.Generator().manual_seed(3)
    parts = [torch.rand(5_000, generator=gen), torch.randn(5_000, generator=gen) * 10, torch.tensor([300.0, -2e3])]
    hist = RunningHistogram()
    for part in parts:
        hist.add(part)
    everything = torch.cat(parts)
    assert hist.total == everything.numel() == int(hist.counts.sum())
    assert (hist.min, hist.max) == (float(everything.min()), float(everything.max()))
    assert hist.lo <= hist.min and hist.hi >= hist.max
    # old bins merge exactly into new ones: the same as counting everything on the final grid,
    # but for values within float32 rounding of an edge
    direct = K.histogram(everything, hist.lo, hist.hi, hist.bins)
    assert int((direct - hist.counts).abs().sum()) <= 4


def test_histogram_of_a_constant_then_spread(backend):
    hist = RunningHistogram()
    hist.add(torch.zeros(100))
    hist.add(torch.linspace(-1.0, 1.0, 101))
    assert hist.total == 201 and hist.quantile(0.0) == -1.0 and hist.quantile(1.0) == 1.0
    assert abs(hist.quantile(0.5)) < 2 * hist.width


def test_histogram_refuses_ranges_beyond_float32():
    with pytest.raises(ValueError, match="too wide for a float32 histogram.*minmax"):
        RunningHistogram().add(torch.tensor([-3e38, 3e38]))
    hist = RunningHistogram()
    hist.add(torch.tensor([0.0, 1e38]))
    with pytest.raises(ValueError, match="too wide"):
        hist.add(torch.tensor([-3e38]))


# ---- the registry --------------------------------------------------------------------------------

class AbsMaxObserver(Observer):
    """A user's observer: symmetric range around the largest magnitude."""

    def __init__(self, config=None):
        super().__init__(config)
        self.amax = 0.0

    def observe(self, x):
        self.amax = max(self.amax, float(x.abs().max()))

    def range(self):
        return -self.amax, self.amax


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the observer registry, so test registrations do not leak."""
    monkeypatch.setattr(observers, "_OBSERVERS", dict(observers._OBSERVERS))
    return observers._OBSERVERS


def test_builtin_names_and_aliases():
    assert observer_names()[:4] == ("minmax", "moving_average", "percentile", "mse")
    assert normalize_observer_name("MinMax") == "minmax"
    assert normalize_observer_name("moving-average") == "moving_average"
    assert normalize_observer_name("moving_average_minmax") == "moving_average"
    assert get_observer("PERCENTILE") is PercentileObserver
    assert QuantizationConfig(observer="MSE").observer == "mse"


def test_custom_observer_is_usable_by_name(registry):
    assert mono_quant.register_observer("absmax", AbsMaxObserver) is AbsMaxObserver
    assert QuantizationConfig(observer="absmax").observer == "absmax"
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = [torch.randn(8, 16) for _ in range(3)]
    stats = calibrate(model, data, observer="absmax", min_params=0, progress=False)
    amax = max(float(b.abs().max()) for b in data)
    assert stats.layers["0"].range == (-amax, amax) and stats.layers["0"].observer == "absmax"
    q_model, info = mono_quant.static_quantize(model, data, observer="absmax", min_params=0)
    assert info.layers["0"].details["observer"] == "absmax"
    assert int(q_model[0].input_zero_point) == 128  # asymmetric uint8 of a symmetric range


def test_registry_refuses_bad_registrations(registry):
    with pytest.raises(TypeError, match="subclass of mono_quant.Observer"):
        register_observer("plain", object)
    with pytest.raises(ValueError, match="lower-case"):
        register_observer("AbsMax", AbsMaxObserver)
    with pytest.raises(ValueError, match="alias"):
        register_observer("min_max", AbsMaxObserver)
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        register_observer("minmax", AbsMaxObserver)
    register_observer("minmax", AbsMaxObserver, replace=True)
    assert get_observer("minmax") is AbsMaxObserver


def test_unknown_observer_says_how_to_register():
    with pytest.raises(ValueError, match=r"observer must be one of 'minmax', .*register_observer"):
        QuantizationConfig(observer="kl")
    with pytest.raises(ValueError, match="observer must be one of"):
        get_observer(3)


def test_a_bad_range_names_the_observer(registry):
    class Broken(AbsMaxObserver):
        def range(self):
            return 1.0, math.nan

    register_observer("broken", Broken)
    with pytest.raises(ValueError, match="observer 'broken' returned the range"):
        calibrate(nn.Sequential(nn.Linear(8, 8)), [torch.randn(2, 8)], observer="broken", min_params=0)
