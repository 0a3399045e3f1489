"""What torch sees: every kernel a quantized module calls in ``forward`` as a torch operator.

The quantized modules in ``nn/`` call ``torch.ops.mono_quant.*`` and nothing else, so the
dispatcher records the call wherever torch looks: ``torch.jit.trace`` records the operator
(not the empty output buffer a C call would leave), ``torch.compile`` and ``torch.export``
see an opaque operator with a shape function (the "fake" implementation below), the meta
device gets shapes only, and the ONNX exporter finds a translation (``onnx_export``).

Each operator has one implementation for every device (``CompositeExplicitAutograd``): on
the CPU it calls the C kernel through ``_kernels`` (the single importer of ``_C``), which
falls back to the pure-torch twin where C cannot run (CUDA tensors, ``use_backend
("reference")``, a source tree without a build). The operators take no gradient; the
modules send inputs that need one through ``dequantize_linear`` and ``F.linear``.

    torch.ops.mono_quant.linear_int8(x, packed, out_features, in_features, bias)
    torch.ops.mono_quant.linear_int4(x, packed, out_features, in_features, group_size, bias)
    torch.ops.mono_quant.dequantize_linear(packed, out_features, in_features, group_size, dtype)
    torch.ops.mono_quant.linear_static_packed(x, input_scale, input_zero_point, input_symmetric,
                                              packed, out_features, in_features, weight_symmetric, bias)
    torch.ops.mono_quant.linear_static(x, input_scale, input_zero_point, input_symmetric,
                                       qweight, scale, zero_point, bias)
    torch.ops.mono_quant.dequantize_int8(qweight, scale, zero_point, dtype)
    torch.ops.mono_quant.fake_quantize_per_tensor(x, scale, zero_point, symmetric)
    torch.ops.mono_quant.embedding_int8(indices, qweight, scale, zero_point, dtype)
    torch.ops.mono_quant.embedding_bag_int8(indices, offsets, per_sample_weights, qweight, scale,
                                            zero_point, mode, padding_idx, dtype)

A traced or exported program that holds these operators needs ``import mono_quant`` before it
is loaded (``torch.jit.load``, ``torch.export.load``): the import registers them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _kernels as K
from . import _reference as ref
from ._int8 import int8_qdtype

NAMESPACE = "mono_quant"
_lib = torch.library.Library(NAMESPACE, "DEF")

_SCHEMAS = {
    "linear_int8": "linear_int8(Tensor x, Tensor packed, int out_features, int in_features, Tensor? bias) -> Tensor",
    "linear_int4": ("linear_int4(Tensor x, Tensor packed, int out_features, int in_features, int group_size, "
                    "Tensor? bias) -> Tensor"),
    "dequantize_linear": ("dequantize_linear(Tensor packed, int out_features, int in_features, int group_size, "
                          "ScalarType dtype) -> Tensor"),
    "linear_static": ("linear_static(Tensor x, Tensor input_scale, Tensor input_zero_point, bool input_symmetric, "
                      "Tensor qweight, Tensor scale, Tensor zero_point, Tensor? bias) -> Tensor"),
    "linear_static_packed": ("linear_static_packed(Tensor x, Tensor input_scale, Tensor input_zero_point, "
                             "bool input_symmetric, Tensor packed, int out_features, int in_features, "
                             "bool weight_symmetric, Tensor? bias) -> Tensor"),
    "dequantize_int8": "dequantize_int8(Tensor qweight, Tensor scale, Tensor zero_point, ScalarType dtype) -> Tensor",
    "fake_quantize_per_tensor": ("fake_quantize_per_tensor(Tensor x, Tensor scale, Tensor zero_point, "
                                 "bool symmetric) -> Tensor"),
}


def plain_eager(x: object) -> bool:
    """True when nothing is recording operators: no ``torch.compile`` / ``torch.export``
    (dynamo sees ``is_compiling``; export and AOT run fake or functional tensors under a
    dispatch mode), no ``torch.jit.trace`` (nor the ONNX exporter, which traces), no
    ``__torch_function__`` mode, and ``x`` is a plain tensor with data (not a FakeTensor,
    another subclass, or a meta tensor, whose operator call runs the shape function). About
    0.5 us.

    >>> plain_eager(torch.randn(2))
    True
    """
    return (type(x) is torch.Tensor and not x.is_meta and not torch.compiler.is_compiling()
            and torch._C._get_tracing_state() is None and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled())


def _register(name: str):
    """Define ``mono_quant::<name>`` with the decorated function as its implementation, and
    bind the name to what the modules call: in plain eager execution (``plain_eager``) the
    implementation itself, skipping the dispatcher's round trip through C++ for a Python
    kernel (~7 us a call: 7-12% of MiniLM's batch-1 latency, ``benchmarks/bench_ops.py``);
    wherever operators are recorded (trace, compile, export, ONNX export, fake tensors) the
    operator ``torch.ops.mono_quant.<name>.default``. Both run the same code. The operator
    stays reachable as ``<name>.op``."""

    def decorate(fn):
        _lib.define(_SCHEMAS[name])
        _lib.impl(name, fn, "CompositeExplicitAutograd")
        op = getattr(getattr(torch.ops, NAMESPACE), name).default

        def call(*args):
            return fn(*args) if plain_eager(args[0]) else op(*args)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = fn.__doc__
        call.op = op  # type: ignore[attr-defined]
        return call

    return decorate


def _fake(name: str):
    return torch.library.register_fake(f"{NAMESPACE}::{name}", lib=_lib)


def _float_out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in K.C_FLOAT_DTYPES else torch.float32


# ---------------------------------------------------------------------------------------------
# Packed Linear (QuantizedLinear, QuantizedLinearInt4): the weight lives in the packed layout.
# ---------------------------------------------------------------------------------------------


def _linear_packed(x: torch.Tensor, packed: torch.Tensor, n: int, k: int, g: int,
                   bias: torch.Tensor | None) -> torch.Tensor:
    if K.linear_packed_uses_c(x, packed):
        return K.linear_packed(x, packed, n, k, g, bias)
    K.check_last_dim(x, k)
    weight = dequantize_packed(packed, n, k, g, x.dtype)
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


def dequantize_packed(packed: torch.Tensor, n: int, k: int, g: int, dtype: torch.dtype) -> torch.Tensor:
    """The float weight ``[n, k]`` held by a packed INT8 (``g == 0``) or INT4 weight."""
    if g:
        u, scale, zp = ref.unpack_linear_int4(packed, n, k, g)
        groups = u.view(n, k // g, g).float() - zp.float().unsqueeze(-1)
        return (groups * scale.float().unsqueeze(-1)).reshape(n, k).to(dtype)
    w, scale, zero = ref.unpack_linear_int8(packed, n, k)
    return ((w.float() - zero.float().unsqueeze(1)) * scale.unsqueeze(1)).to(dtype)


@_register("linear_int8")
def linear_int8(x, packed, out_features, in_features, bias):
    return _linear_packed(x, packed, out_features, in_features, 0, bias)


@_register("linear_int4")
def linear_int4(x, packed, out_features, in_features, group_size, bias):
    return _linear_packed(x, packed, out_features, in_features, group_size, bias)


@_register("dequantize_linear")
def dequantize_linear(packed, out_features, in_features, group_size, dtype):
    return dequantize_packed(packed, out_features, in_features, group_size, dtype)


@_fake("linear_int8")
def _linear_int8_fake(x, packed, out_features, in_features, bias):
    _refuse_dynamo_onnx("linear_int8", "QuantizedLinear", out_features, in_features)
    return x.new_empty(*x.shape[:-1], out_features)


@_fake("linear_int4")
def _linear_int4_fake(x, packed, out_features, in_features, group_size, bias):
    _refuse_dynamo_onnx("linear_int4", "QuantizedLinearInt4", out_features, in_features)
    return x.new_empty(*x.shape[:-1], out_features)


@_fake("dequantize_linear")
def _dequantize_linear_fake(packed, out_features, in_features, group_size, dtype):
    return packed.new_empty(out_features, in_features, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Packed static INT8 (StaticQuantizedLinear): the packed INT8 weight plus row sums, float input
# quantized inside the kernel with the calibrated scale and zero point.
# ---------------------------------------------------------------------------------------------


@_register("linear_static_packed")
def linear_static_packed(x, input_scale, input_zero_point, input_symmetric, packed, out_features, in_features,
                         weight_symmetric, bias):
    if K.linear_packed_uses_c(x, packed):
        return K.linear_static_packed(x, input_scale.item(), input_zero_point.item(), input_symmetric, packed,
                                      out_features, in_features, bias)
    # elsewhere (CUDA, float64, the reference backend): the canonical pipeline, the same bits
    K.check_last_dim(x, in_features)
    qweight, scale, zero_point = ref.unpack_linear_static(packed, out_features, in_features,
                                                          int8_qdtype(weight_symmetric))
    return _linear_static_canonical(x, input_scale, input_zero_point, input_symmetric, qweight, scale,
                                    zero_point, bias)


@_fake("linear_static_packed")
def _linear_static_packed_fake(x, input_scale, input_zero_point, input_symmetric, packed, out_features,
                               in_features, weight_symmetric, bias):
    _refuse_dynamo_onnx("linear_static_packed", "StaticQuantizedLinear", out_features, in_features)
    return x.new_empty(*x.shape[:-1], out_features)


# ---------------------------------------------------------------------------------------------
# Canonical INT8 weights (the Conv2d modules, and programs traced from an older StaticQuantizedLinear):
# the C kernels read them.
# ---------------------------------------------------------------------------------------------


@_register("linear_static")
def linear_static(x, input_scale, input_zero_point, input_symmetric, qweight, scale, zero_point, bias):
    return _linear_static_canonical(x, input_scale, input_zero_point, input_symmetric, qweight, scale,
                                    zero_point, bias)


def _linear_static_canonical(x, input_scale, input_zero_point, input_symmetric, qweight, scale, zero_point, bias):
    xq = K.quantize(x, input_scale, input_zero_point, axis=None, qdtype=int8_qdtype(input_symmetric))
    y = K.linear_static(xq, input_scale, input_zero_point, qweight, scale, zero_point, bias, _float_out_dtype(x))
    return y.to(x.dtype)


@_register("dequantize_int8")
def dequantize_int8(qweight, scale, zero_point, dtype):
    return K.dequantize(qweight, scale, zero_point, axis=0, out_dtype=dtype)


@_register("fake_quantize_per_tensor")
def fake_quantize_per_tensor(x, scale, zero_point, symmetric):
    q = K.quantize(x, scale, zero_point, axis=None, qdtype=int8_qdtype(symmetric))
    return K.dequantize(q, scale, zero_point, axis=None, out_dtype=_float_out_dtype(x)).to(x.dtype)


@_fake("linear_static")
def _linear_static_fake(x, input_scale, input_zero_point, input_symmetric, qweight, scale, zero_point, bias):
    _refuse_dynamo_onnx("linear_static", "StaticQuantizedLinear", qweight.shape[0], qweight.shape[1])
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@_fake("dequantize_int8")
def _dequantize_int8_fake(qweight, scale, zero_point, dtype):
    _refuse_dynamo_onnx("dequantize_int8", "QuantizedConv2d or StaticQuantizedConv2d", qweight.shape[0],
                        qweight.shape[1])
    return qweight.new_empty(qweight.shape, dtype=dtype)


@_fake("fake_quantize_per_tensor")
def _fake_quantize_per_tensor_fake(x, scale, zero_point, symmetric):
    return torch.empty_like(x)


def _refuse_dynamo_onnx(op: str, module: str, out_features: int, in_features: int) -> None:
    """``torch.onnx.export(dynamo=True)`` would stop at this operator with an error about a
    missing translation, far from the layer; say which layer and what works instead."""
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError(
            f"torch.onnx.export(dynamo=True) cannot translate mono_quant::{op} (a {module} layer, "
            f"{in_features} -> {out_features} features). Export quantized models with "
            "mono_quant.export_onnx(model, example_inputs, path), or torch.onnx.export(..., dynamo=False) "
            "after `import mono_quant`: both write standard QDQ / MatMulNBits graphs that ONNX Runtime runs."
        )


# ---------------------------------------------------------------------------------------------
# Embeddings (QuantizedEmbedding, QuantizedEmbeddingBag): per-row INT8 tables, rows gathered.
# ---------------------------------------------------------------------------------------------

_SCHEMAS.update({
    "embedding_int8": ("embedding_int8(Tensor indices, Tensor qweight, Tensor scale, Tensor zero_point, "
                       "ScalarType dtype) -> Tensor"),
    "embedding_bag_int8": ("embedding_bag_int8(Tensor indices, Tensor offsets, Tensor? per_sample_weights, "
                           "Tensor qweight, Tensor scale, Tensor zero_point, str mode, int padding_idx, "
                           "ScalarType dtype) -> Tensor"),
})


@_register("embedding_int8")
def embedding_int8(indices, qweight, scale, zero_point, dtype):
    return K.embedding_int8(indices, qweight, scale, zero_point, dtype)


@_register("embedding_bag_int8")
def embedding_bag_int8(indices, offsets, per_sample_weights, qweight, scale, zero_point, mode, padding_idx, dtype):
    return K.embedding_int8_bag(indices, offsets, per_sample_weights, qweight, scale, zero_point, mode,
                                padding_idx, dtype)


@_fake("embedding_int8")
def _embedding_int8_fake(indices, qweight, scale, zero_point, dtype):
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError(
            "torch.onnx.export(dynamo=True) cannot translate mono_quant::embedding_int8 (a QuantizedEmbedding "
            f"layer, {qweight.shape[0]} x {qweight.shape[1]}). Export with mono_quant.export_onnx(model, "
            "example_inputs, path) or torch.onnx.export(..., dynamo=False) after `import mono_quant`: both write "
            "a Gather of the int8 table and its per-row scales, dequantized in the graph."
        )
    return qweight.new_empty(*indices.shape, qweight.shape[1], dtype=dtype)


@_fake("embedding_bag_int8")
def _embedding_bag_int8_fake(indices, offsets, per_sample_weights, qweight, scale, zero_point, mode, padding_idx,
                             dtype):
    if torch.onnx.is_in_onnx_export():
        raise RuntimeError(
            "ONNX export of QuantizedEmbeddingBag is not supported (ONNX has no bag reduction); keep the "
            "EmbeddingBag float (quantize_embeddings=False, or skip_types=['EmbeddingBag']) to export this model."
        )
    return qweight.new_empty(offsets.shape[0] - 1, qweight.shape[1], dtype=dtype)
