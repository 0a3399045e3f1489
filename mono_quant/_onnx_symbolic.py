"""ONNX translations of the ``mono_quant::*`` operators for the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), registered by ``onnx_export.register_onnx_symbolics``.

Importing this file imports ``torch.onnx`` (about 0.1 s), so nothing imports it at package
import time. Each function below receives the exporter's graph context ``g`` and the traced
values of the operator's arguments, and emits standard ONNX (opset >= 13: per-axis
``DequantizeLinear``) plus ``com.microsoft::MatMulNBits`` for INT4. The graphs and why they
were chosen: ``docs/onnx.md``.

Weights are emitted in their quantized dtype only (int8 / uint8 tensors, never a float copy):
- a packed weight (QuantizedLinear, QuantizedLinearInt4, StaticQuantizedLinear) is a module buffer outside the
  state_dict, so the tracer records it as a constant; its bytes are unpacked here in Python
  (``_reference.unpack_linear_*``) into the ONNX layout and emitted as int8 / uint8 constants;
- a canonical weight (the Conv2d modules; linear_static of older traces) is a state_dict buffer, so it
  is a graph initializer already; the Transpose / Cast / Squeeze applied to it here are folded
  into new int8 / uint8 / float scalar initializers by the exporter's constant folding.
"""

from __future__ import annotations

import contextvars

import torch
from torch.onnx import JitScalarType
from torch.onnx import symbolic_helper as sh

from . import _reference as ref
from ._int8 import int8_qdtype

NAMESPACE = "mono_quant"
MIN_OPSET = 13  # per-axis DequantizeLinear / QuantizeLinear
# MatMulNBits' accuracy_level: 4 quantizes the activations to int8 per block (of group_size;
# mono_quant's kernel: of 32), ORT's fastest CPU path; 1.7x faster than 1 (float activations) on
# MiniLM at batch 1 with the same accuracy vs fp32 (docs/onnx.md).
INT4_ACCURACY_LEVEL = 4

_FLOAT = JitScalarType.FLOAT
_ONNX_INT_TYPES = {torch.int8: JitScalarType.INT8, torch.uint8: JitScalarType.UINT8}


class OnnxExportError(RuntimeError):
    """A quantized layer that this exporter cannot write as ONNX (the message says why and what
    to do instead)."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _check_opset(g, op: str) -> None:
    if g.opset < MIN_OPSET:
        raise OnnxExportError(
            f"mono_quant::{op} needs ONNX opset >= {MIN_OPSET} (per-channel DequantizeLinear); "
            f"got opset_version={g.opset}. Export with opset_version between {MIN_OPSET} and 20."
        )


def _constant_value(g, value, op: str, what: str) -> torch.Tensor:
    """The tensor held by ``value``: a traced constant or a graph initializer."""
    node = value.node()
    if node.kind() in ("onnx::Constant", "prim::Constant") and node.hasAttribute("value"):
        return sh._node_get(node, "value")
    name = value.debugName()
    if name in g.params_dict:
        held = g.params_dict[name]
        return held.toTensor() if hasattr(held, "toTensor") else held
    if node.kind() == "prim::Param":  # a torch.jit module: its buffers are graph parameters, and
        # torch's exporter does not hand their values to translations (GraphContext.params_dict is empty)
        raise OnnxExportError(
            f"cannot export mono_quant::{op} from a torch.jit module: its {what} is a graph parameter "
            "whose value torch's exporter does not pass on. Export the nn.Module itself (before "
            "torch.jit.trace / torch.jit.script): mono_quant.export_onnx(model, example_inputs, path)."
        )
    raise OnnxExportError(
        f"cannot export mono_quant::{op}: its {what} is computed in the graph (node {node.kind()}), "
        "not a constant the exporter can read. Export the model with the layer's own buffer "
        "(do not pass a computed weight), e.g. mono_quant.export_onnx(model, example_inputs, path)."
    )


def _const(g, tensor: torch.Tensor):
    return g.op("Constant", value_t=tensor.contiguous())


def _scalar_type(value) -> JitScalarType:
    return JitScalarType.from_value(value, JitScalarType.FLOAT)


def _to_float(g, x):
    """``x`` as float32 (the quantize operators and the int kernels take float32 only)."""
    return x if _scalar_type(x) == _FLOAT else g.op("Cast", x, to_i=_FLOAT.onnx_type())


def _to_type(g, y, scalar_type: JitScalarType):
    return y if scalar_type == _FLOAT else g.op("Cast", y, to_i=scalar_type.onnx_type())


def _add_bias(g, y, bias):
    if sh._is_none(bias):
        return y
    return g.op("Add", y, _to_float(g, bias))


def _per_tensor_qparams(g, scale, zero_point, symmetric: bool):
    """Scalar scale (float32) and zero point (int8 / uint8) from the [1]-shaped buffers:
    QuantizeLinear reads a 1-D scale as per-axis, so the activation's must be a scalar."""
    qtype = _ONNX_INT_TYPES[torch.int8 if symmetric else torch.uint8]
    s = sh._squeeze_helper(g, _to_float(g, scale), [0])
    z = sh._squeeze_helper(g, g.op("Cast", zero_point, to_i=qtype.onnx_type()), [0])
    return s, z


def _weight_dtype(qweight) -> torch.dtype:
    return _scalar_type(qweight).dtype()


# ---------------------------------------------------------------------------------------------
# QuantizedLinear: the int8 weight with a per-channel DequantizeLinear, MatMul
# ---------------------------------------------------------------------------------------------

# How the activations of a dynamic INT8 Linear are written (``export_onnx(int8_activations=)``;
# set by export_onnx for its export):
# "float" leaves them in float (ORT fuses DequantizeLinear + MatMul into an 8-bit MatMulNBits);
# "dynamic" adds DynamicQuantizeLinear + DequantizeLinear (ORT fuses the QDQ group into its
# integer DynamicQuantizeMatMul: faster, but per-tensor uint8 activations lose accuracy).
int8_activations: contextvars.ContextVar[str] = contextvars.ContextVar("mono_quant_onnx_int8_activations",
                                                                       default="float")


@sh.parse_args("v", "v", "i", "i", "v")
def linear_int8(g, x, packed, out_features, in_features, bias):
    _check_opset(g, "linear_int8")
    w, scale, zero = ref.unpack_linear_int8(_constant_value(g, packed, "linear_int8", "packed weight"),
                                            out_features, in_features)
    x_type = _scalar_type(x)
    xf = _to_float(g, x)
    if int8_activations.get() == "dynamic":
        xq, x_scale, x_zero = g.op("DynamicQuantizeLinear", xf, outputs=3)
        xf = g.op("DequantizeLinear", xq, x_scale, x_zero)
    # weight = (w - zero) * scale with w = q - center and zero = zero_point - center, both in
    # int8 range: [k, n] so that MatMul needs no Transpose, per output channel = axis 1.
    w_t = _const(g, w.to(torch.int8).t())
    wdq = g.op("DequantizeLinear", w_t, _const(g, scale.float()), _const(g, zero.to(torch.int8)), axis_i=1)
    return _to_type(g, _add_bias(g, g.op("MatMul", xf, wdq), bias), x_type)


# ---------------------------------------------------------------------------------------------
# QuantizedLinearInt4: com.microsoft::MatMulNBits
# ---------------------------------------------------------------------------------------------


def _pack_nibbles(u: torch.Tensor) -> torch.Tensor:
    """uint8 values 0..15 ``[..., m]`` -> bytes ``[..., ceil(m / 2)]``, even index low."""
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.zeros_like(u[..., :1])], dim=-1)
    return u[..., 0::2] | (u[..., 1::2] << 4)


@sh.parse_args("v", "v", "i", "i", "i", "v")
def linear_int4(g, x, packed, out_features, in_features, group_size, bias):
    n, k, gs = out_features, in_features, group_size
    u, scale, zp = ref.unpack_linear_int4(_constant_value(g, packed, "linear_int4", "packed weight"), n, k, gs)
    x_type = _scalar_type(x)
    blocks = k // gs
    # B [N, blocks, gs / 2]: the canonical nibble order (even k low), block after block.
    b = _pack_nibbles(u).reshape(n, blocks, gs // 2)
    inputs = [_to_float(g, x), _const(g, b), _const(g, scale.float().reshape(n * blocks))]
    if not bool((zp == 8).all()):  # MatMulNBits' default zero point is 8: omit it when symmetric
        inputs.append(_const(g, _pack_nibbles(zp).reshape(-1)))
    y = g.op("com.microsoft::MatMulNBits", *inputs, K_i=k, N_i=n, bits_i=4, block_size_i=gs,
             accuracy_level_i=INT4_ACCURACY_LEVEL)
    return _to_type(g, _add_bias(g, y, bias), x_type)


# ---------------------------------------------------------------------------------------------
# StaticQuantizedLinear: QDQ on the activation and the weight, MatMul (ORT fuses to integer)
# ---------------------------------------------------------------------------------------------


def _dequantized_weight(g, qweight, scale, zero_point, axis: int, transpose: bool):
    """``DequantizeLinear`` of an int8 / uint8 weight initializer per output channel."""
    qtype = _ONNX_INT_TYPES[_weight_dtype(qweight)]
    w = g.op("Transpose", qweight, perm_i=[1, 0]) if transpose else qweight
    z = g.op("Cast", zero_point, to_i=qtype.onnx_type())
    return g.op("DequantizeLinear", w, _to_float(g, scale), z, axis_i=axis)


@sh.parse_args("v", "v", "v", "b", "v", "v", "v", "v")
def linear_static(g, x, input_scale, input_zero_point, input_symmetric, qweight, scale, zero_point, bias):
    _check_opset(g, "linear_static")
    x_type = _scalar_type(x)
    s, z = _per_tensor_qparams(g, input_scale, input_zero_point, input_symmetric)
    xdq = g.op("DequantizeLinear", g.op("QuantizeLinear", _to_float(g, x), s, z), s, z)
    w = _dequantized_weight(g, qweight, scale, zero_point, axis=1, transpose=True)  # [k, n]
    return _to_type(g, _add_bias(g, g.op("MatMul", xdq, w), bias), x_type)


@sh.parse_args("v", "v", "v", "b", "v", "i", "i", "b", "v")
def linear_static_packed(g, x, input_scale, input_zero_point, input_symmetric, packed, out_features, in_features,
                         weight_symmetric, bias):
    """The graph of ``linear_static``, with the canonical weight unpacked from the packed constant."""
    _check_opset(g, "linear_static_packed")
    held = _constant_value(g, packed, "linear_static_packed", "packed weight")
    q, scale, zp = ref.unpack_linear_static(held, out_features, in_features, int8_qdtype(weight_symmetric))
    x_type = _scalar_type(x)
    s, z = _per_tensor_qparams(g, input_scale, input_zero_point, input_symmetric)
    xdq = g.op("DequantizeLinear", g.op("QuantizeLinear", _to_float(g, x), s, z), s, z)
    w = g.op("DequantizeLinear", _const(g, q.t()), _const(g, scale.float()), _const(g, zp.to(q.dtype)),
             axis_i=1)  # [k, n], per output channel
    return _to_type(g, _add_bias(g, g.op("MatMul", xdq, w), bias), x_type)


# ---------------------------------------------------------------------------------------------
# QuantizedConv2d / StaticQuantizedConv2d: the weight and the input round trip
# ---------------------------------------------------------------------------------------------


@sh.parse_args("v", "v", "v", "i")
def dequantize_int8(g, qweight, scale, zero_point, dtype):
    _check_opset(g, "dequantize_int8")
    w = _dequantized_weight(g, qweight, scale, zero_point, axis=0, transpose=False)
    return _to_type(g, w, JitScalarType(dtype))


@sh.parse_args("v", "v", "v", "b")
def fake_quantize_per_tensor(g, x, scale, zero_point, symmetric):
    _check_opset(g, "fake_quantize_per_tensor")
    s, z = _per_tensor_qparams(g, scale, zero_point, symmetric)
    y = g.op("DequantizeLinear", g.op("QuantizeLinear", _to_float(g, x), s, z), s, z)
    return _to_type(g, y, _scalar_type(x))


# ---------------------------------------------------------------------------------------------
# dequantize_linear: a packed layer's float weight (its autograd path, dequantized_weight())
# ---------------------------------------------------------------------------------------------


@sh.parse_args("v", "v", "i", "i", "i", "i")
def dequantize_linear(g, packed, out_features, in_features, group_size, dtype):
    # The layers do not take this path while torch.onnx exports (nn/_packed_weight.needs_autograd),
    # and with a constant weight torch folds it before translating; what is left would be a
    # float copy of the weight in the file.
    raise OnnxExportError(
        f"cannot export mono_quant::dequantize_linear, the float weight of a packed "
        f"{'INT4' if group_size else 'INT8'} Linear ({in_features} -> {out_features} features): the file "
        "would hold a float copy of it. Export the layers' own forward (not code that calls "
        "dequantized_weight()), e.g. mono_quant.export_onnx(model, example_inputs, path)."
    )


# ---------------------------------------------------------------------------------------------
# QuantizedEmbedding: Gather the int8 rows and their scales, dequantize only those
# ---------------------------------------------------------------------------------------------


@sh.parse_args("v", "v", "v", "v", "i")
def embedding_int8(g, indices, qweight, scale, zero_point, dtype):
    """The table stays an int8 / uint8 initializer: ``Gather`` picks the rows looked up and
    their scales and zero points, and ``(float(q) - float(zero_point)) * scale`` dequantizes
    them: exact small integers, then one float32 product, as the C kernel computes."""
    _check_opset(g, "embedding_int8")
    rows = g.op("Cast", g.op("Gather", qweight, indices, axis_i=0), to_i=_FLOAT.onnx_type())
    s = sh._unsqueeze_helper(g, g.op("Gather", _to_float(g, scale), indices, axis_i=0), [-1])
    z = sh._unsqueeze_helper(g, g.op("Cast", g.op("Gather", zero_point, indices, axis_i=0),
                                     to_i=_FLOAT.onnx_type()), [-1])
    return _to_type(g, g.op("Mul", g.op("Sub", rows, z), s), JitScalarType(dtype))


def embedding_bag_int8(g, *args):
    raise OnnxExportError(
        "cannot export mono_quant::embedding_bag_int8 (a QuantizedEmbeddingBag): ONNX has no bag reduction "
        "operator to write it with. Keep the EmbeddingBag float for an ONNX export (quantize_embeddings=False, "
        "or skip_types=['EmbeddingBag'])."
    )


SYMBOLICS = {
    "embedding_int8": embedding_int8,
    "embedding_bag_int8": embedding_bag_int8,
    "linear_int8": linear_int8,
    "linear_int4": linear_int4,
    "linear_static": linear_static,
    "linear_static_packed": linear_static_packed,
    "dequantize_int8": dequantize_int8,
    "fake_quantize_per_tensor": fake_quantize_per_tensor,
    "dequantize_linear": dequantize_linear,
}
