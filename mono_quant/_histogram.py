"""A running histogram of everything a layer received, for the percentile and MSE observers.

The counts of each batch come from the C kernel ``histogram`` (torch twin in ``_reference``)
over fixed bin edges. When a batch falls outside the current range, the range grows to
cover it so that every old bin lies inside exactly one new bin (the new bin width is an
integer multiple ``k`` of the old one and the new edges fall on old edges): old counts move
exactly, without any splitting or guessing.
"""

from __future__ import annotations

import math

import torch

from . import _kernels as K

HISTOGRAM_BINS = 2048
# A first batch with a single value has no width; it is given a small one around the value.
_MIN_RELATIVE_WIDTH = 2.0**-10
_MIN_WIDTH = 1e-30


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


class RunningHistogram:
    """Counts of the values seen so far over ``bins`` equal bins of ``[lo, hi]``, plus the exact
    minimum, maximum and number of values.

    >>> hist = RunningHistogram()
    >>> hist.add(torch.randn(1000))
    >>> hist.quantile(0.5)    # about 0.0
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins = int(bins)
        self.counts: torch.Tensor | None = None  # int64 [bins], on the CPU
        self.lo = self.hi = 0.0  # float32 values
        self.min = math.inf
        self.max = -math.inf
        self.total = 0

    @property
    def empty(self) -> bool:
        return self.total == 0

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def add(self, x: torch.Tensor) -> None:
        """Count the values of ``x`` (any shape; NaN or Inf raise ValueError)."""
        if x.numel() == 0:
            return
        mn, mx = (float(v) for v in K.minmax(x))
        if self.counts is None:
            self._start(mn, mx)
        elif mn < self.lo or mx > self.hi:
            self._grow(min(mn, self.lo), max(mx, self.hi))
        assert self.counts is not None
        self.counts += K.histogram(x, self.lo, self.hi, self.bins).cpu()
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        self.total += x.numel()

    def centers(self) -> torch.Tensor:
        """The middle of each bin, float64 ``[bins]``."""
        return self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.width

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the values lie, interpolated linearly
        inside its bin and kept inside the exact ``[min, max]`` seen.

        >>> hist.quantile(0.9999)
        """
        if self.counts is None or self.total == 0:
            raise RuntimeError("the histogram is empty: no values were added")
        if q <= 0.0:
            return self.min
        if q >= 1.0:
            return self.max
        cumulative = torch.cumsum(self.counts, 0).to(torch.float64)
        target = q * self.total
        index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))[0])
        index = min(index, self.bins - 1)
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        inside = float(self.counts[index])
        fraction = (target - before) / inside if inside > 0 else 0.0
        value = self.lo + (index + fraction) * self.width
        return min(max(value, self.min), self.max)

    def _start(self, mn: float, mx: float) -> None:
        if mx - mn <= _MIN_WIDTH:
            half = max(abs(mn) * _MIN_RELATIVE_WIDTH, _MIN_WIDTH)
            mn, mx = mn - half, mx + half
        self.lo, self.hi = _f32(mn), _f32(mx)
        self._check_range()
        self.counts = torch.zeros(self.bins, dtype=torch.int64)

    def _grow(self, new_lo: float, new_hi: float) -> None:
        """Widen ``[lo, hi]`` to cover ``[new_lo, new_hi]``: new bin width = k * old width,
        ``pad`` old bins added below, so old bin i lands in new bin ``(pad + i) // k``."""
        assert self.counts is not None
        width = self.width
        pad = math.ceil((self.lo - new_lo) / width)
        k = max(2, math.ceil((pad + (new_hi - self.lo) / width) / self.bins))
        start = self.lo - pad * width
        # (pad + i) // k without big integers in torch (pad is huge after a tiny first range)
        base, rest = divmod(pad, k)
        index = torch.arange(self.bins)
        if k <= 2**40:
            target = base + (rest + index) // k
        else:  # k > bins: each old bin lands in new bin base or base + 1
            target = base + (index >= min(k - rest, self.bins)).long()
        counts = torch.zeros(self.bins, dtype=torch.int64)
        counts.index_add_(0, target, self.counts)
        self.counts = counts
        self.lo = _f32(start)
        self.hi = _f32(start + k * self.bins * width)
        self._check_range()

    def _check_range(self) -> None:
        span = torch.tensor(self.hi, dtype=torch.float32) - torch.tensor(self.lo, dtype=torch.float32)
        if not bool(torch.isfinite(span)):
            raise ValueError(
                f"the values span [{self.lo:g}, {self.hi:g}], too wide for a float32 histogram; "
                "use observer='minmax' for this layer's inputs"
            )
