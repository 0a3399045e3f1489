"""INT8 embedding tables: ``QuantizedEmbedding`` ("int8_embedding") and ``QuantizedEmbeddingBag``
("int8_embedding_bag").

Canonical tensors: those of an INT8 weight (``formats/int8.py``) without a bias: ``qweight``
uint8 / int8 ``[num_embeddings, embedding_dim]``, ``scale`` float32 and ``zero_point`` int32
``[num_embeddings]``, one per row. The params add what the module needs beyond the tensors:
``padding_idx``, the looked-up rows' ``dtype``, and for bags ``mode`` / ``include_last_offset``.
Files made from a state_dict hold the same tensors under the INT8 keys and record the layer as
"int8_linear"; loading one into a model whose layer is an nn.Embedding takes it as a table
(``format_for_float_module``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._json import brief
from .._layers import dtype_name
from ..nn import QuantizedEmbedding, QuantizedEmbeddingBag
from .base import FLOAT_DTYPES, Expected, require
from .int8 import _Int8Format

_FLOAT_NAMES = {dtype_name(d): d for d in FLOAT_DTYPES}


class Int8EmbeddingFormat(_Int8Format):
    """``QuantizedEmbedding``: replaces ``nn.Embedding``.

    >>> get_format("int8_embedding").params(QuantizedEmbedding.from_float(nn.Embedding(10, 4)))
    {'original_shape': [10, 4], 'symmetric': False, 'per_channel': True, 'padding_idx': None, 'dtype': 'float32'}
    """

    kind = "int8_embedding"
    module_type = QuantizedEmbedding
    float_types = (nn.Embedding,)
    rank = 2

    def params(self, module: nn.Module) -> dict[str, Any]:
        return {"original_shape": [module.num_embeddings, module.embedding_dim], "symmetric": bool(module.symmetric),
                "per_channel": bool(module.per_channel), "padding_idx": module.padding_idx,
                "dtype": dtype_name(module.weight_dtype)}

    def params_from_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        params = super().params_from_state(tensors)
        if params is None or params.pop("bias"):
            return None
        return params

    def check_params(self, params: Mapping[str, Any]) -> None:
        shape = require(params, "original_shape", "shape")
        if len(shape) != 2:
            raise ValueError(f"field 'original_shape' must have 2 dimensions; got {shape}")
        require(params, "symmetric", "bool")
        if "per_channel" in params:
            require(params, "per_channel", "bool")
        padding = params.get("padding_idx")
        if padding is not None and not (require(params, "padding_idx", "int") < shape[0]):
            raise ValueError(f"field 'padding_idx' must be null or a row of the table (< {shape[0]}); got {padding}")
        if "dtype" in params and params["dtype"] not in _FLOAT_NAMES:
            raise ValueError(f"field 'dtype' must be one of {', '.join(_FLOAT_NAMES)}; got {brief(params['dtype'])}")

    def expected_tensors(self, params: Mapping[str, Any]) -> dict[str, Expected]:
        return super().expected_tensors({**params, "bias": False})

    def describe(self, params: Mapping[str, Any]) -> str:
        dtype = "int8" if params.get("symmetric", False) else "uint8"
        granularity = " per-tensor" if params.get("per_channel") is False else " per-row"
        return f"{dtype}{granularity} {'symmetric' if params.get('symmetric', False) else 'asymmetric'}"

    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        shape = [module.num_embeddings, module.embedding_dim]
        if shape != list(params["original_shape"]):
            return (f"the file holds a {params['original_shape']} table but the model's {type(module).__name__} "
                    f"is {shape}")
        if "padding_idx" in params and params["padding_idx"] != module.padding_idx:
            return f"the file says padding_idx={params['padding_idx']} but the model's layer has {module.padding_idx}"
        return None

    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        layer = self.module_type(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                 **self._table_options(params, module))
        return self._fill(layer, module, tensors)

    @staticmethod
    def _table_options(params: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
        dtype = _FLOAT_NAMES.get(params.get("dtype", ""), module.weight.dtype)
        return {"symmetric": params["symmetric"], "per_channel": params.get("per_channel", True), "dtype": dtype,
                "device": "meta"}


class Int8EmbeddingBagFormat(Int8EmbeddingFormat):
    """``QuantizedEmbeddingBag``: replaces ``nn.EmbeddingBag``; the params also record ``mode``
    and ``include_last_offset`` (checked against the model's layer)."""

    kind = "int8_embedding_bag"
    module_type = QuantizedEmbeddingBag
    float_types = (nn.EmbeddingBag,)

    def params(self, module: nn.Module) -> dict[str, Any]:
        return {**super().params(module), "mode": module.mode, "include_last_offset": module.include_last_offset}

    def check_params(self, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        if "mode" in params and params["mode"] not in ("sum", "mean", "max"):
            raise ValueError(f"field 'mode' must be 'sum', 'mean' or 'max'; got {brief(params['mode'])}")
        if "include_last_offset" in params:
            require(params, "include_last_offset", "bool")

    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        for field in ("mode", "include_last_offset"):
            if field in params and params[field] != getattr(module, field):
                return (f"the file says {field}={params[field]!r} but the model's EmbeddingBag has "
                        f"{getattr(module, field)!r}")
        return super().skeleton_mismatch(params, module)

    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        layer = self.module_type(module.num_embeddings, module.embedding_dim, module.mode, module.include_last_offset,
                                 module.padding_idx, **self._table_options(params, module))
        return self._fill(layer, module, tensors)
