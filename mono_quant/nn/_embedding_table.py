"""What ``QuantizedEmbedding`` and ``QuantizedEmbeddingBag`` share: the per-row INT8 table.

The table is held in the file layout and read by the gather kernel as it is: ``qweight``
int8 (symmetric) or uint8 (asymmetric, the default for embeddings) ``[num_embeddings,
embedding_dim]``, ``scale`` float32 ``[num_embeddings]``, ``zero_point`` int32
``[num_embeddings]``. A lookup dequantizes only the rows it reads.

Options that change what a float embedding does and that a quantized table cannot honour are
refused when the module is made from a float one, never dropped: ``max_norm`` (rescales the
rows looked up, in place, during forward), and the training options ``sparse`` and
``scale_grad_by_freq`` (a quantized table takes no gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from .._int8 import quantize_weight_int8
from ._input_check import FLOAT_INPUT_DTYPES
from ._int8_weight import Int8WeightMixin

INDEX_DTYPES = (torch.int64, torch.int32)


def unsupported_options(module: nn.Module) -> str | None:
    """Why float ``module`` (an nn.Embedding or nn.EmbeddingBag) cannot become a quantized
    table, or None.

    >>> unsupported_options(nn.Embedding(10, 4, max_norm=1.0))
    'max_norm=1.0 renormalises ...'
    """
    if getattr(module, "max_norm", None) is not None:
        return (f"max_norm={module.max_norm} renormalises the rows it looks up, in place, during forward; a "
                "quantized table cannot do that: build the embedding with max_norm=None or keep it float")
    for option in ("sparse", "scale_grad_by_freq"):
        if getattr(module, option, False):
            return (f"{option}=True is a training option (gradients), and a quantized table takes no gradient; "
                    f"set {option}=False to quantize it, or keep it float")
    return None


def check_indices(module: nn.Module, indices: object, name: str = "input") -> None:
    """TypeError unless ``indices`` is an int64 or int32 tensor, as ``F.embedding`` requires."""
    dtype = getattr(indices, "dtype", None)
    if isinstance(indices, torch.Tensor) and dtype in INDEX_DTYPES:
        return
    got = str(dtype) if isinstance(indices, torch.Tensor) else f"a {type(indices).__name__}, not a tensor"
    raise TypeError(f"{type(module).__name__} takes {name} indices as an int64 or int32 tensor (as nn.Embedding); "
                    f"got {got}; convert them with .long()")


class EmbeddingTableMixin(Int8WeightMixin):
    """The table's buffers (via ``Int8WeightMixin``, without a bias), its output dtype and the
    conversion from a float embedding.

    >>> layer.dequantized_weight().shape == (layer.num_embeddings, layer.embedding_dim)
    True
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    weight_dtype: torch.dtype

    def _init_table(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, symmetric: bool,
                    per_channel: bool, dtype: torch.dtype, device: torch.device | str | None) -> None:
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"num_embeddings and embedding_dim must be positive; got {num_embeddings} and "
                             f"{embedding_dim}")
        if dtype not in FLOAT_INPUT_DTYPES:
            raise ValueError(f"dtype (of the looked-up rows) must be a floating dtype; got {dtype}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = _normalize_padding_idx(padding_idx, self.num_embeddings)
        self.weight_dtype = dtype
        self._init_int8((self.num_embeddings, self.embedding_dim), False, symmetric, per_channel, device, dtype)

    def _load_float_table(self, module: nn.Module, symmetric: bool, per_channel: bool) -> None:
        reason = unsupported_options(module)
        if reason is not None:
            raise ValueError(f"cannot quantize this {type(module).__name__}: {reason}")
        q, scale, zp = quantize_weight_int8(module.weight.detach(), symmetric=symmetric, per_channel=per_channel)
        self.qweight, self.scale, self.zero_point = q, scale, zp

    def _table_repr(self) -> str:
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        dtype = str(self.weight_dtype).removeprefix("torch.")
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}, {self._int8_repr()}, dtype={dtype}"


def _normalize_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """As nn.Embedding: a negative index counts from the end; out of range is an error."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within num_embeddings ([-{num_embeddings}, {num_embeddings})); "
                         f"got {padding_idx}")
    return int(padding_idx) % num_embeddings
