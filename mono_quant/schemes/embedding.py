"""The embedding scheme: nn.Embedding -> QuantizedEmbedding, nn.EmbeddingBag -> QuantizedEmbeddingBag.

Opt-in (``quantize_embeddings=True``): embedding tables become INT8 per row whatever the run's
dtype (an INT4 run keeps its Linear layers INT4 and its tables INT8: a table is read a row at a
time, where per-row INT8 costs no speed and keeps 40+ dB). Rows are asymmetric (uint8 with a
zero point) unless ``symmetric`` is set explicitly: on MiniLM-L6 asymmetric rows gain 0.7 dB
(word), 2.6 dB (position) and 4.0 dB (token type) SQNR over symmetric ones for the same bytes,
and the sentence-embedding cosine against fp32 goes from 0.99990 to 0.99997. Not registered as
a dtype: ``LayerSchemes`` hands embedding layers to it when the option is on.

In a state_dict (``dynamic_quantize(state_dict)``, ``quantize_checkpoint``) a 2-D weight whose
layer name contains "embed" is taken as a table; its entries are those of an INT8 Linear
(``weight`` uint8/int8, ``weight_scale`` and ``weight_zero_point`` per row).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .._int8 import dequantize_weight_int8, quantize_weight_int8
from .._layers import dtype_name, own_tensors, state_kind, tensor_bytes
from ..info import LayerInfo
from ..nn import QuantizedEmbedding, QuantizedEmbeddingBag
from ..nn._embedding_table import unsupported_options
from ..nn.qembedding import table_options
from .base import Scheme
from .int8 import int8_layer_info

EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


class EmbeddingScheme(Scheme):
    """INT8 embedding tables, one scale and zero point per row.

    >>> qmodel, info = dynamic_quantize(model, "int8", quantize_embeddings=True)
    >>> info.layers["embeddings.word_embeddings"].scheme
    'uint8 per-row asymmetric'
    """

    name = "int8_embedding"
    supported_types = EMBEDDING_TYPES
    _replacements: dict[type[nn.Module], type[QuantizedEmbedding] | type[QuantizedEmbeddingBag]] = {
        nn.Embedding: QuantizedEmbedding,
        nn.EmbeddingBag: QuantizedEmbeddingBag,
    }

    def skip_reason(self, name: str, module: nn.Module) -> str | None:
        return unsupported_options(module)

    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        quantized = self._replacements[type(module)].from_float(module, self.config)
        record = self._record(name, type(module).__name__, module.weight, quantized.dequantized_weight,
                              tensor_bytes(own_tensors(module).values()), quantized.storage_bytes(),
                              quantized.qweight.dtype)
        return quantized, record

    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        weight = tensors.get("weight")
        if weight is None:
            return "has no 'weight' tensor"
        if not weight.is_floating_point():
            return f"weight is {dtype_name(weight.dtype)}, not floating point"
        if weight.dim() != 2:
            return f"{weight.dim()}-D weight: an embedding table is 2-D"
        if set(tensors) != {"weight"}:
            return f"an embedding table holds only 'weight'; this layer also has {sorted(set(tensors) - {'weight'})}"
        return None

    def convert_state(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                                        LayerInfo]:
        weight = tensors["weight"]
        symmetric, per_channel = table_options(self.config, None)
        q, scale, zp = quantize_weight_int8(weight, symmetric=symmetric, per_channel=per_channel)
        out = {"weight": q, "weight_scale": scale, "weight_zero_point": zp}
        record = self._record(prefix, state_kind(prefix, tensors), weight,
                              lambda dtype: dequantize_weight_int8(q, scale, zp, dtype),
                              tensor_bytes(tensors.values()), tensor_bytes(out.values()), q.dtype)
        return out, record

    def _record(self, name, module_type, weight, dequantize, before, after, qdtype) -> LayerInfo:
        symmetric, per_channel = table_options(self.config, None)
        return int8_layer_info(name, module_type, weight, dequantize, before, after, qdtype, symmetric=symmetric,
                               per_channel=per_channel, has_bias=False, compute_sqnr=self.config.compute_sqnr,
                               channel="row")
