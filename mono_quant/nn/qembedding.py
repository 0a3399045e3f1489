"""``QuantizedEmbedding``: an ``nn.Embedding`` whose table is stored as INT8, one scale per row."""

from __future__ import annotations

import torch
from torch import nn

from .. import _ops as ops
from ..config import QuantizationConfig
from ._embedding_table import EmbeddingTableMixin, check_indices


class QuantizedEmbedding(EmbeddingTableMixin, nn.Module):
    """Embedding table with INT8 rows, each with its own scale and zero point.

    Buffers: ``qweight`` uint8 (asymmetric, the default) or int8 (symmetric) ``[num_embeddings,
    embedding_dim]``, ``scale`` float32 and ``zero_point`` int32 ``[num_embeddings]`` (the file
    layout, read by the kernel as it is). ``forward(indices)`` takes int64 / int32 indices of
    any shape and returns ``[*indices.shape, embedding_dim]`` of ``weight_dtype`` (the float
    table's dtype): each row looked up is dequantized, ``(q - zero_point) * scale``, and no
    other row is read. ``torch.ops.mono_quant.embedding_int8`` does it: C on the CPU, torch
    elsewhere. ``padding_idx`` is kept (it only matters for gradients in nn.Embedding; its row
    quantizes to exact zeros when it was zero). An index outside ``[0, num_embeddings)``
    raises IndexError, as nn.Embedding does. Inference only: no gradient.

    >>> q = QuantizedEmbedding.from_float(nn.Embedding(1000, 64))
    >>> q(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 64])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        symmetric: bool = False,
        per_channel: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, padding_idx, symmetric, per_channel, dtype, device)

    @classmethod
    def from_float(cls, embedding: nn.Embedding, config: QuantizationConfig | None = None, *,
                   symmetric: bool | None = None) -> QuantizedEmbedding:
        """Quantize ``embedding`` (left unchanged) per row: asymmetric (uint8) unless
        ``symmetric=True`` is passed or set explicitly in ``config`` (measured on MiniLM-L6's
        tables: asymmetric rows gain 0.7 to 4 dB SQNR for the same bytes). ``max_norm``,
        ``sparse`` and ``scale_grad_by_freq`` are refused (ValueError).

        >>> q = QuantizedEmbedding.from_float(model.embeddings.word_embeddings)
        >>> q.qweight.dtype
        torch.uint8
        """
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"from_float needs an nn.Embedding; got {type(embedding).__name__}")
        symmetric, per_channel = table_options(config, symmetric)
        weight = embedding.weight
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, symmetric=symmetric,
                    per_channel=per_channel, dtype=weight.dtype, device=weight.device)
        layer._load_float_table(embedding, symmetric, per_channel)
        layer.train(embedding.training)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Embedding's name)
        check_indices(self, input)
        return ops.embedding_int8(input, self.qweight, self.scale, self.zero_point, self.weight_dtype)

    def extra_repr(self) -> str:
        return self._table_repr()


def table_options(config: QuantizationConfig | None, symmetric: bool | None) -> tuple[bool, bool]:
    """``(symmetric, per_channel)`` of an embedding table: ``symmetric`` when given, else the
    config's when it was set there explicitly, else False (asymmetric rows); ``per_channel``
    from the config (True: one scale per row; False: one scale repeated over the rows).

    >>> table_options(None, None)
    (False, True)
    """
    config = QuantizationConfig() if config is None else config
    if symmetric is None:
        symmetric = config.symmetric if config.symmetric_given else False
    return bool(symmetric), bool(config.per_channel)
