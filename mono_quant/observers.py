"""Observers: what a layer's inputs looked like during calibration, reduced to one range.

An observer is fed every tensor its layer receives (``observe``) and then says which range
``(min, max)`` those activations should be quantized over (``range``). It knows nothing of
scales or zero points: ``static_quantize`` turns the range into them with the same
``qparams`` kernel the weights use. Built in (names for ``observer=``):

  "minmax"          the running minimum and maximum: nothing is clipped.
  "moving_average"  minimum and maximum averaged over batches with ``momentum``:
                    ``new = (1 - momentum) * old + momentum * batch``; one outlier batch
                    moves the range only partly.
  "percentile"      the ``100 - percentile`` and ``percentile`` quantiles (default 99.99) of
                    everything seen, from a 2048-bin histogram: rare outliers are clipped.
  "mse"             the clipping range that minimises the squared quantization error over
                    the same histogram (searched over shrunken copies of [min, max]).

Adding one: subclass ``Observer``, ``register_observer("absmax", AbsMaxObserver)``, then
``static_quantize(model, data, observer="absmax")`` (or ``observer = "absmax"`` in the config
file). Importing this module registers the built-in observers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from . import _kernels as K
from ._histogram import RunningHistogram
from ._int8 import int8_qdtype

if TYPE_CHECKING:
    from .config import QuantizationConfig


class Observer(ABC):
    """Watches the tensors one layer receives and produces the range to quantize them over.

    Subclasses implement ``observe(x)`` (called once per forward call of the layer, with its
    input; ``x`` may live on any device) and ``range() -> (min, max)`` (called once, after
    calibration). ``self.config`` is the run's ``QuantizationConfig``, for options such as
    ``percentile`` or ``momentum``.

    >>> class AbsMaxObserver(Observer):
    ...     def __init__(self, config=None):
    ...         super().__init__(config)
    ...         self.amax = 0.0
    ...     def observe(self, x):
    ...         self.amax = max(self.amax, float(x.abs().max()))
    ...     def range(self):
    ...         return -self.amax, self.amax
    >>> register_observer("absmax", AbsMaxObserver)
    """

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        if config is None:
            from .config import QuantizationConfig  # late: the config validates observer names

            config = QuantizationConfig()
        self.config = config

    @abstractmethod
    def observe(self, x: torch.Tensor) -> None:
        """Take one input tensor of the layer into account."""

    @abstractmethod
    def range(self) -> tuple[float, float]:
        """``(min, max)`` to quantize the layer's inputs over, ``min <= max``, both finite."""


def _require(seen: bool) -> None:
    if not seen:
        raise RuntimeError("the observer has seen no data; call observe() before range()")


class MinMaxObserver(Observer):
    """The smallest and largest value of all observed tensors.

    >>> obs = MinMaxObserver(); obs.observe(torch.tensor([-1.0, 3.0])); obs.range()
    (-1.0, 3.0)
    """

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        super().__init__(config)
        self.min = math.inf
        self.max = -math.inf

    def observe(self, x: torch.Tensor) -> None:
        if x.numel():
            mn, mx = K.minmax(x)
            self.min = min(self.min, float(mn))
            self.max = max(self.max, float(mx))

    def range(self) -> tuple[float, float]:
        _require(self.min <= self.max)
        return self.min, self.max


class MovingAverageMinMaxObserver(Observer):
    """Per-batch minimum and maximum, averaged: the first batch sets them, each later one
    moves them by ``momentum`` (config, default 0.1) towards its own.

    >>> obs = MovingAverageMinMaxObserver(QuantizationConfig(momentum=0.5))
    >>> obs.observe(torch.tensor([0.0, 2.0])); obs.observe(torch.tensor([0.0, 4.0])); obs.range()
    (0.0, 3.0)
    """

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        super().__init__(config)
        self.momentum = float(self.config.momentum)
        self.min: float | None = None
        self.max: float | None = None

    def observe(self, x: torch.Tensor) -> None:
        if not x.numel():
            return
        mn, mx = (float(v) for v in K.minmax(x))
        if self.min is None or self.max is None:
            self.min, self.max = mn, mx
        else:
            self.min = (1.0 - self.momentum) * self.min + self.momentum * mn
            self.max = (1.0 - self.momentum) * self.max + self.momentum * mx

    def range(self) -> tuple[float, float]:
        _require(self.min is not None)
        assert self.min is not None and self.max is not None
        return self.min, self.max


class _HistogramObserver(Observer):
    """Base of the observers that keep a histogram of everything seen."""

    def __init__(self, config: QuantizationConfig | None = None) -> None:
        super().__init__(config)
        self.histogram = RunningHistogram()

    def observe(self, x: torch.Tensor) -> None:
        self.histogram.add(x)


class PercentileObserver(_HistogramObserver):
    """The ``100 - p`` and ``p`` percentiles of all observed values, ``p = config.percentile``
    (default 99.99), from a 2048-bin histogram with linear interpolation inside a bin, never
    beyond the values actually seen. ``p = 100`` gives the exact minimum and maximum.

    >>> obs = PercentileObserver(QuantizationConfig(percentile=99.0))
    """

    def range(self) -> tuple[float, float]:
        _require(not self.histogram.empty)
        q = float(self.config.percentile) / 100.0
        return self.histogram.quantile(1.0 - q), self.histogram.quantile(q)


class MSEObserver(_HistogramObserver):
    """The range whose quantization error (sum of squared differences between each value and
    its quantize-dequantize round trip, estimated on the histogram's bin centres) is
    smallest. Candidates shrink the observed minimum and maximum independently by factors
    from 1 down to 1/128 (40 steps, geometric); symmetric activations shrink one bound.
    The error uses the library's own ``qparams`` / ``quantize`` / ``dequantize`` with the
    activation dtype of the config (``activation_symmetric``). Ties go to the wider range.

    >>> obs = MSEObserver(QuantizationConfig(activation_symmetric=False))
    """

    STEPS = 40
    SMALLEST_FACTOR = 1.0 / 128.0

    def range(self) -> tuple[float, float]:
        hist = self.histogram
        _require(not hist.empty)
        symmetric = bool(self.config.activation_symmetric)
        factors = torch.logspace(0.0, math.log2(self.SMALLEST_FACTOR), self.STEPS, base=2.0,
                                 dtype=torch.float64)
        if symmetric:
            bound = factors * max(-hist.min, hist.max)
            lows, highs = torch.clamp_min(-bound, hist.min), torch.clamp_max(bound, hist.max)
        else:
            low_side = factors * hist.min if hist.min < 0 else torch.tensor([hist.min], dtype=torch.float64)
            high_side = factors * hist.max if hist.max > 0 else torch.tensor([hist.max], dtype=torch.float64)
            lows, highs = (g.reshape(-1) for g in torch.meshgrid(low_side, high_side, indexing="ij"))
        errors = self._errors(lows.float(), highs.float(), symmetric)
        best = int(torch.argmin(errors))
        return float(lows[best].float()), float(highs[best].float())

    def _errors(self, lows: torch.Tensor, highs: torch.Tensor, symmetric: bool) -> torch.Tensor:
        """Estimated squared error of quantizing the histogram over each candidate range."""
        hist = self.histogram
        assert hist.counts is not None
        used = hist.counts > 0
        centres = hist.centers()[used].float()
        counts = hist.counts[used].to(torch.float64)
        qdtype = int8_qdtype(symmetric)
        lows = torch.minimum(lows, highs)  # float32 rounding must not swap a collapsed range
        scale, zp = K.qparams(lows, highs, qdtype, symmetric=symmetric)
        values = centres.expand(lows.numel(), -1).contiguous()
        round_trip = K.dequantize(K.quantize(values, scale, zp, axis=0, qdtype=qdtype), scale, zp, axis=0)
        return ((values.double() - round_trip.double()) ** 2 * counts).sum(dim=1)


# ---- the registry ------------------------------------------------------------------------------

_OBSERVERS: dict[str, type[Observer]] = {}
_ALIASES = {
    "min_max": "minmax",
    "movingaverage": "moving_average",
    "moving_average_minmax": "moving_average",
    "movingaverageminmax": "moving_average",
}


def register_observer(name: str, cls: type[Observer], *, replace: bool = False) -> type[Observer]:
    """Make ``cls`` the observer used for ``observer=name``; returns ``cls``. Registering a
    taken name needs ``replace=True``.

    >>> register_observer("absmax", AbsMaxObserver)
    >>> static_quantize(model, loader, observer="absmax")
    """
    if not isinstance(name, str) or not name or name != name.lower() or name in _ALIASES:
        raise ValueError(
            f"observer name must be a non-empty lower-case string and not an alias of a "
            f"built-in observer; got {name!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Observer)):
        raise TypeError(f"an observer must be a subclass of mono_quant.Observer; got {cls!r}")
    if name in _OBSERVERS and _OBSERVERS[name] is not cls and not replace:
        raise ValueError(
            f"an observer named {name!r} is already registered ({_OBSERVERS[name].__name__}); "
            "pass replace=True to override it"
        )
    _OBSERVERS[name] = cls
    return cls


def normalize_observer_name(name: object) -> str:
    """The registered name ``name`` stands for (case and ``-``/``_`` insensitive, with aliases).

    >>> normalize_observer_name("Moving-Average")
    'moving_average'
    """
    if isinstance(name, str):
        key = name.lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in _OBSERVERS:
            return key
    raise ValueError(
        f"observer must be one of {', '.join(map(repr, observer_names()))}; got {name!r} "
        "(register your own with mono_quant.register_observer(name, cls))"
    )


def get_observer(name: str) -> type[Observer]:
    """The observer class registered under ``name``.

    >>> get_observer("percentile")
    <class 'mono_quant.observers.PercentileObserver'>
    """
    return _OBSERVERS[normalize_observer_name(name)]


def observer_names() -> tuple[str, ...]:
    """Names of all registered observers, in registration order."""
    return tuple(_OBSERVERS)


register_observer("minmax", MinMaxObserver)
register_observer("moving_average", MovingAverageMinMaxObserver)
register_observer("percentile", PercentileObserver)
register_observer("mse", MSEObserver)
