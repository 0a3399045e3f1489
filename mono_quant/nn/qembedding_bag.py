"""``QuantizedEmbeddingBag``: an ``nn.EmbeddingBag`` whose table is stored as INT8, one scale per row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ops as ops
from ..config import QuantizationConfig
from ._embedding_table import EmbeddingTableMixin, check_indices
from ._packed_weight import needs_autograd
from .qembedding import table_options

MODES = ("sum", "mean", "max")


class QuantizedEmbeddingBag(EmbeddingTableMixin, nn.Module):
    """Bags of rows of an INT8 table reduced by ``mode`` ("sum", "mean" or "max"), as
    ``nn.EmbeddingBag`` computes them.

    Buffers as ``QuantizedEmbedding``. ``forward(input, offsets=None, per_sample_weights=None)``
    takes what nn.EmbeddingBag takes: a 2-D ``input [bags, length]`` (fixed-length bags), or a
    1-D ``input`` with ``offsets`` (bag b starts at ``offsets[b]``; with
    ``include_last_offset=True`` the last offset ends the last bag), and ``per_sample_weights``
    of the input's shape (mode "sum" only). Rows equal to ``padding_idx`` are left out of their
    bag (and of a mean's count); a bag with no rows gives zeros. Each bag is reduced in index
    order in float32 by ``torch.ops.mono_quant.embedding_bag_int8`` (C on the CPU, torch
    elsewhere), reading only the rows it holds. ``per_sample_weights`` that need a gradient
    take a float path, so autograd reaches them.

    >>> q = QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(1000, 64, mode="sum"))
    >>> q(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 3])).shape
    torch.Size([2, 64])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        *,
        symmetric: bool = False,
        per_channel: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self._init_table(num_embeddings, embedding_dim, padding_idx, symmetric, per_channel, dtype, device)

    @classmethod
    def from_float(cls, bag: nn.EmbeddingBag, config: QuantizationConfig | None = None, *,
                   symmetric: bool | None = None) -> QuantizedEmbeddingBag:
        """Quantize ``bag`` (left unchanged) per row, as ``QuantizedEmbedding.from_float``.

        >>> q = QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(100, 16, mode="max"))
        """
        if not isinstance(bag, nn.EmbeddingBag):
            raise TypeError(f"from_float needs an nn.EmbeddingBag; got {type(bag).__name__}")
        symmetric, per_channel = table_options(config, symmetric)
        weight = bag.weight
        layer = cls(bag.num_embeddings, bag.embedding_dim, bag.mode, bag.include_last_offset, bag.padding_idx,
                    symmetric=symmetric, per_channel=per_channel, dtype=weight.dtype, device=weight.device)
        layer._load_float_table(bag, symmetric, per_channel)
        layer.train(bag.training)
        return layer

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,  # noqa: A002 (torch's name)
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        check_indices(self, input)
        indices, bounds = self._bags(input, offsets)
        if per_sample_weights is not None:
            if self.mode != "sum":
                raise NotImplementedError(
                    f"per_sample_weights are only supported for mode='sum' (as in nn.EmbeddingBag); this bag's "
                    f"mode is {self.mode!r}")
            if per_sample_weights.shape != input.shape:
                raise ValueError(f"per_sample_weights must have the shape of input {tuple(input.shape)}; got "
                                 f"{tuple(per_sample_weights.shape)}")
            per_sample_weights = per_sample_weights.reshape(-1)
            if needs_autograd(per_sample_weights):
                return self._float_forward(indices, bounds, per_sample_weights)
        padding = -1 if self.padding_idx is None else self.padding_idx
        return ops.embedding_bag_int8(indices, bounds, per_sample_weights, self.qweight, self.scale,
                                      self.zero_point, self.mode, padding, self.weight_dtype)

    def _bags(self, input: torch.Tensor, offsets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices [n], bounds [bags + 1])``: bag b is ``indices[bounds[b]:bounds[b + 1]]``.
        Built from shapes only (no values read), so traced and compiled graphs stay general."""
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (each row is one bag), as in nn.EmbeddingBag")
            bags, length = input.shape
            bounds = torch.arange(bags + 1, dtype=torch.int64, device=input.device) * length
            return input.reshape(-1), bounds
        if input.dim() != 1:
            raise ValueError(f"input must be 1-D (with offsets) or 2-D (one bag per row); got {input.dim()}-D")
        if offsets is None or offsets.dim() != 1:
            raise ValueError("a 1-D input needs 1-D offsets (the start of each bag), as in nn.EmbeddingBag")
        check_indices(self, offsets, "offsets")
        offsets = offsets.to(torch.int64)
        if self.include_last_offset:
            return input, offsets
        end = torch.full((1,), input.shape[0], dtype=torch.int64, device=offsets.device)
        return input, torch.cat([offsets, end])

    def _float_forward(self, indices: torch.Tensor, bounds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        table = self.dequantized_weight(torch.float32)
        out = F.embedding_bag(indices, table, bounds, mode="sum", per_sample_weights=weights.float(),
                              include_last_offset=True, padding_idx=self.padding_idx)
        return out.to(self.weight_dtype)

    def extra_repr(self) -> str:
        return f"{self._table_repr()}, mode={self.mode!r}" + (
            ", include_last_offset=True" if self.include_last_offset else "")
