"""The calibration rows of a GPTQ run: the batches (cut to ``num_samples`` rows), one held-back
batch for measuring, the padding mask of a batch, and the tensors of a model's output.

Every pass over the data runs the same list of batches, so ``calib_data`` may be a generator: it
is read once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._calib_data import Batch, iter_batches

HOLDOUT_MAX_ROWS = 32  # rows of the held-back batch the layer output SQNRs are measured on


@dataclass
class CalibSet:
    """The batches calibration runs (``rows`` in all) and the held-back one. When the data ran
    out first, the last calibration batch stands in (``holdout_is_calibration``).

    >>> calib = collect_batches([torch.randn(8, 16)] * 4, num_samples=24)
    >>> calib.rows, calib.holdout.rows, calib.holdout_is_calibration
    (24, 8, False)
    """

    batches: list[Batch]
    holdout: Batch
    holdout_is_calibration: bool
    rows: int

    def first_rows(self, n: int) -> list[Batch]:
        """The calibration batches cut to their first ``n`` rows in all."""
        out, left = [], n
        for batch in self.batches:
            if left <= 0:
                break
            head, _ = batch.split(left)
            out.append(head)
            left -= head.rows
        return out


def collect_batches(calib_data: Any, num_samples: int) -> CalibSet:
    """Read ``calib_data`` (any form ``static_quantize`` takes) up to ``num_samples`` rows plus
    one held-back batch of at most ``HOLDOUT_MAX_ROWS`` rows."""
    source = iter_batches(calib_data)
    batches: list[Batch] = []
    rows = 0
    leftover = None
    for batch in source:
        batch, leftover = batch.split(num_samples - rows)
        batches.append(batch)
        rows += batch.rows
        if rows >= num_samples:
            break
    if not batches:
        raise ValueError("calib_data yielded no samples; pass at least one non-empty batch")
    holdout = leftover if leftover is not None else next(source, None)
    stand_in = holdout is None
    if stand_in:
        holdout = batches[-1]
    return CalibSet(batches, holdout.split(HOLDOUT_MAX_ROWS)[0], stand_in, rows)


def token_mask(batch: Batch, x: torch.Tensor) -> torch.Tensor | None:
    """Which rows of ``x`` viewed as ``[-1, x.shape[-1]]`` are real tokens: from the batch's
    ``attention_mask`` keyword (a ``[batch, tokens]`` tensor, as tokenizers return it) when x's
    leading dimensions are exactly its shape; None (every row counts) otherwise.

    >>> token_mask(Batch(kwargs={"attention_mask": torch.tensor([[1, 0]])}), torch.zeros(1, 2, 8))
    tensor([ True, False])
    """
    mask = batch.kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(x.shape[:-1]) != tuple(mask.shape):
        return None
    return mask.detach().reshape(-1).to(device=x.device) != 0


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model's output, in order: the output itself, the items
    of a tuple / list, the values of a dict or a Hugging Face ``ModelOutput``.

    >>> [t.shape for t in output_tensors({"logits": torch.zeros(2, 3), "ids": torch.zeros(2)})]
    [torch.Size([2, 3]), torch.Size([2])]
    """
    if isinstance(output, torch.Tensor):
        return [output.detach()] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return []
    return [t for item in items for t in output_tensors(item)]
