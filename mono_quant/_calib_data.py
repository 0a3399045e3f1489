"""Calibration data in every form ``calibrate`` takes, as batches it can count, cut and run;
and the progress bar.

``calib_data`` may be a DataLoader or any other iterable of batches, a list of tensors, a
single tensor or a single dict (one batch each). A batch is a tensor (the model's input),
an ``(input, target, ...)`` tuple or list (the input is the first element), or a dict of
keyword arguments (``model(**batch)``, as Hugging Face models take them). Samples are rows:
the first dimension of the input tensor (of the first tensor in a dict).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.utils.data
from torch import nn

PROGRESS_MIN_SAMPLES = 50  # with progress=None, a bar shows for more samples than this


@dataclass
class Batch:
    """One call of the model: ``model(*args, **kwargs)`` on ``rows`` samples.

    >>> Batch.from_item((images, labels)).rows     # images.shape[0]
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    rows: int = 1

    @classmethod
    def from_item(cls, item: Any) -> Batch:
        """The batch a ``calib_data`` item stands for (see the module docstring)."""
        if isinstance(item, (tuple, list)):
            if not item:
                raise TypeError("calib_data yielded an empty tuple/list; expected (input, target, ...)")
            item = item[0]
        if isinstance(item, torch.Tensor):
            return cls(args=(item,), rows=_rows(item))
        if isinstance(item, Mapping):
            kwargs = dict(item)
            first = next((v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
            return cls(kwargs=kwargs, rows=1 if first is None else first.shape[0])
        raise TypeError(
            "calib_data must yield tensors, (input, target) tuples or dicts of keyword "
            f"arguments; got {type(item).__name__}"
        )

    def run(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def split(self, n: int) -> tuple[Batch, Batch | None]:
        """The first ``n`` rows and the rest (None when nothing is left). Tensors whose first
        dimension is the batch's row count are cut; everything else is passed to both."""
        if n >= self.rows:
            return self, None
        cut = lambda v, s: v[s] if self._is_rows(v) else v  # noqa: E731
        head, tail = slice(0, n), slice(n, None)
        return (
            Batch(tuple(cut(a, head) for a in self.args), {k: cut(v, head) for k, v in self.kwargs.items()}, n),
            Batch(tuple(cut(a, tail) for a in self.args), {k: cut(v, tail) for k, v in self.kwargs.items()},
                  self.rows - n),
        )

    def _is_rows(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.rows


def _rows(t: torch.Tensor) -> int:
    return t.shape[0] if t.dim() > 0 else 1


def iter_batches(calib_data: Any) -> Iterator[Batch]:
    """The batches of ``calib_data``, skipping empty ones.

    >>> [b.rows for b in iter_batches([torch.randn(4, 8), torch.randn(2, 8)])]
    [4, 2]
    """
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        calib_data = [calib_data]
    if isinstance(calib_data, (str, bytes)) or not isinstance(calib_data, Iterable):
        raise TypeError(
            "calib_data must be a DataLoader or another iterable of batches (tensors, "
            f"(input, target) tuples or dicts of keyword arguments); got {type(calib_data).__name__}"
        )
    for item in calib_data:
        batch = Batch.from_item(item)
        if batch.rows > 0:
            yield batch


def expected_samples(calib_data: Any, num_samples: int) -> int:
    """How many samples calibration will run: ``num_samples``, or fewer when ``calib_data``
    says cheaply that it holds fewer (a tensor, a dict, a list or tuple of batches, a
    DataLoader over a sized dataset); generators and other iterables count as ``num_samples``.

    >>> expected_samples([torch.zeros(4, 8)] * 3, 150)
    12
    """
    try:
        if isinstance(calib_data, (torch.Tensor, Mapping)):
            available = Batch.from_item(calib_data).rows
        elif isinstance(calib_data, (list, tuple)):
            available = sum(Batch.from_item(item).rows for item in calib_data)
        elif isinstance(calib_data, torch.utils.data.DataLoader):
            available = len(calib_data.dataset)  # type: ignore[arg-type]
        else:
            return num_samples
    except (TypeError, NotImplementedError):  # iter_batches reports bad items when it meets them
        return num_samples
    return min(num_samples, available)


class ProgressBar(Protocol):
    def update(self, n: int) -> Any: ...


class _NoBar:
    def update(self, n: int) -> None:
        pass


class _PlainBar:
    """A one-line text bar on stderr for when tqdm is not installed."""

    WIDTH = 30

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self._draw()

    def update(self, n: int) -> None:
        self.n += n
        self._draw()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self) -> None:
        done = min(self.WIDTH, self.WIDTH * self.n // max(self.total, 1))
        bar = "#" * done + "." * (self.WIDTH - done)
        sys.stderr.write(f"\r{self.desc}: [{bar}] {self.n}/{self.total} samples")
        sys.stderr.flush()


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool | None, desc: str = "Calibrating") -> Iterator[ProgressBar]:
    """A bar counting samples up to ``total``: tqdm when installed, a plain one otherwise.
    ``enabled=None`` shows it when ``total`` (see ``expected_samples``) exceeds
    ``PROGRESS_MIN_SAMPLES``.

    >>> with progress_bar(150, None) as bar:
    ...     bar.update(32)
    """
    if enabled is None:
        enabled = total > PROGRESS_MIN_SAMPLES
    if not enabled:
        yield _NoBar()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        bar: Any = _PlainBar(total, desc)
    else:
        bar = tqdm(total=total, desc=desc, unit="sample")
    try:
        yield bar
    finally:
        bar.close()
