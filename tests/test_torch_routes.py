"""Every route out of eager PyTorch, on every quantized module type: ``torch.jit.trace`` (and a
saved trace), ``torch.jit.script``, ``torch.compile(fullgraph=True)``, ``torch.export`` and the
meta device. Each one either equals eager or refuses with an error that names the module and
the routes that work; none may return something else silently (the trace used to return the
empty output buffer of an invisible C call)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import _kernels as K
from mono_quant.nn import (
    QuantizedConv2d, QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedLinear, QuantizedLinearInt4,
    StaticQuantizedConv2d, StaticQuantizedLinear,
)

from helpers import cosine


def _linear(**config) -> nn.Module:
    return QuantizedLinear.from_float(nn.Linear(64, 40), mono_quant.QuantizationConfig(**config))


MODULES = {
    "int8": lambda: _linear(),
    "int8_asym": lambda: _linear(symmetric=False),
    "int8_per_tensor": lambda: _linear(per_channel=False),
    "int4": lambda: QuantizedLinearInt4.from_float(nn.Linear(64, 40), group_size=32),
    "int4_asym_no_bias": lambda: QuantizedLinearInt4.from_float(nn.Linear(64, 40, bias=False), 32, symmetric=False),
    "static": lambda: StaticQuantizedLinear.from_float(nn.Linear(64, 40), input_range=(-2.5, 3.0)),
    "static_sym": lambda: StaticQuantizedLinear.from_float(
        nn.Linear(64, 40), mono_quant.QuantizationConfig(activation_symmetric=True), input_range=(-2.5, 3.0)),
    "conv": lambda: QuantizedConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1)),
    "conv_reflect": lambda: QuantizedConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")),
    "static_conv": lambda: StaticQuantizedConv2d.from_float(nn.Conv2d(3, 8, 3, stride=2), input_range=(-2.0, 2.0)),
    "embedding": lambda: QuantizedEmbedding.from_float(nn.Embedding(50, 24, padding_idx=0)),
    "embedding_bag": lambda: QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(50, 24, mode="max", padding_idx=3)),
}
OPS = {"int8": "linear_int8", "int4": "linear_int4", "static": "linear_static_packed", "conv": "dequantize_int8",
       "static_conv": "fake_quantize_per_tensor", "embedding": "embedding_int8", "embedding_bag": "embedding_bag_int8"}


def _op_name(kind: str) -> str:
    return next(op for prefix, op in sorted(OPS.items(), key=lambda kv: -len(kv[0])) if kind.startswith(prefix))


def _inputs(kind: str, batch: int) -> torch.Tensor:
    if "embedding" in kind:  # token ids; a bag module takes each row as one bag
        return torch.randint(0, 50, (batch, 7))
    return torch.randn(batch, 3, 9, 9) if "conv" in kind else torch.randn(batch, 7, 64)


@pytest.fixture(params=sorted(MODULES))
def kind(request) -> str:
    return request.param


def test_trace_records_the_operators_and_equals_eager(kind, tmp_path):
    module = MODULES[kind]().eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, _inputs(kind, 2))
        assert f"mono_quant::{_op_name(kind)}" in str(traced.graph)
        x = _inputs(kind, 5)  # another batch size and other values than the trace's example
        assert torch.equal(traced(x), module(x))
        torch.jit.save(traced, tmp_path / "traced.pt")
        assert torch.equal(torch.jit.load(tmp_path / "traced.pt")(x), module(x))


def test_a_traced_module_follows_new_weights(kind):
    # The trace holds the module's tensors, not the values they had: load new weights, the
    # trace computes with them (a C call invisible to the tracer would have baked constants).
    module, other = MODULES[kind]().eval(), MODULES[kind]().eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, _inputs(kind, 2))
        for name, tensor in traced.state_dict().items():
            tensor.copy_(dict(other.named_buffers())[name])
        x = _inputs(kind, 3)
        assert torch.equal(traced(x), other(x))


def test_script_refuses_with_the_routes_that_work(kind):
    module = MODULES[kind]()
    for target in (module, nn.Sequential(nn.Identity(), module)):
        with pytest.raises(RuntimeError, match=f"torch.jit.script cannot compile {type(module).__name__} .*"
                                               r"torch.jit.trace\(model, example_inputs\).*torch.compile"):
            torch.jit.script(target)


def test_compile_fullgraph_runs_the_same_kernels(kind):
    module = MODULES[kind]().eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(module)(_inputs(kind, 2))
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        ops = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
        assert any(op.startswith(f"mono_quant.{_op_name(kind)}") for op in ops), ops
        compiled = torch.compile(module, fullgraph=True)
        for batch in (2, 5):
            x = _inputs(kind, batch)
            torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_export_runs_and_equals_eager(kind):
    module = MODULES[kind]().eval()
    x = _inputs(kind, 3)
    with torch.no_grad():
        program = torch.export.export(module, (x,))
        assert f"mono_quant.{_op_name(kind)}.default" in str(program.graph)
        other = _inputs(kind, 3)
        assert torch.equal(program.module()(other), module(other))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        assert torch.equal(torch.export.load(buffer).module()(other), module(other))


def test_export_with_a_dynamic_batch(kind):
    module = MODULES[kind]().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(module, (_inputs(kind, 3),), dynamic_shapes=({0: batch},))
        for size in (1, 6):
            x = _inputs(kind, size)
            assert torch.equal(program.module()(x), module(x))


def test_forward_on_the_meta_device(kind):
    module = MODULES[kind]()
    x = _inputs(kind, 2)
    with torch.no_grad():
        expected = module(x)
        on_meta = copy.deepcopy(module).to("meta")
        out = on_meta(x.to("meta"))
    assert out.device.type == "meta" and out.shape == expected.shape and out.dtype == expected.dtype
    # Built on the meta device, as skeletons are, and saved there: shapes and dtypes only.
    assert all(t.device.type == "meta" for t in on_meta.state_dict().values())
    assert {k: (t.shape, t.dtype) for k, t in on_meta.state_dict().items()} == {
        k: (t.shape, t.dtype) for k, t in module.state_dict().items()}


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_whole_quantized_model_through_every_route(scheme):
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    qmodel, _ = mono_quant.dynamic_quantize(model, scheme, group_size=32)
    x, other = torch.randn(4, 64), torch.randn(9, 64)
    with torch.no_grad():
        eager = qmodel(other)
        assert torch.equal(torch.jit.trace(qmodel, x)(other), eager)
        torch._dynamo.reset()
        # ReLU rounds nothing, so the compiled model matches eager to the last bit here.
        torch.testing.assert_close(torch.compile(qmodel, fullgraph=True)(other), eager, rtol=1e-5, atol=1e-6)
        torch._dynamo.reset()
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(qmodel, (x,), dynamic_shapes=({0: batch},))
        assert torch.equal(program.module()(other), eager)
        assert cosine(eager, model(other)) > 0.99


def test_the_operators_take_the_reference_path_under_the_reference_backend():
    # The backend is read when the operator runs, not when it is traced or compiled.
    module = MODULES["int8"]().eval()
    x = _inputs("int8", 2)
    with torch.no_grad():
        traced = torch.jit.trace(module, x)
        with K.use_backend("reference"):
            reference = module(x)
            assert torch.equal(traced(x), reference)
        assert not torch.equal(traced(x), reference)  # C: int8 activations, not float math


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_minilm_traces_and_compiles_in_one_graph(scheme):
    pytest.importorskip("transformers", reason="the MiniLM demo model needs transformers (make test installs it)")
    from mono_quant.demo import SENTENCES, load_minilm

    model, tokenizer = load_minilm()
    qmodel, _ = mono_quant.dynamic_quantize(model, scheme, validate=False)
    batch = dict(tokenizer(SENTENCES[:3], return_tensors="pt", padding=True))
    other = dict(tokenizer(SENTENCES[3:6], return_tensors="pt", padding=True))
    with torch.no_grad():
        eager = qmodel(**other).last_hidden_state
        torch._dynamo.reset()
        explained = torch._dynamo.explain(qmodel)(**batch)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        # The same graph run without re-optimising the float ops (aot_eager) is eager to the bit;
        # inductor's fused float ops round differently, and the int8 activation rounding of the
        # next layer turns a few of those last-bit differences into one quantization step.
        torch._dynamo.reset()
        compiled = torch.compile(qmodel, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(**other).last_hidden_state, eager)
        torch._dynamo.reset()
        traced = torch.jit.trace(qmodel, example_kwarg_inputs=batch, strict=False)
        out = traced(**other)
        assert torch.equal(out["last_hidden_state"], eager)


def test_minilm_with_eager_attention_compiles_with_inductor(monkeypatch):
    """The README's fastest CPU route for a small encoder (benchmarks/bench_onnx.py): switch
    transformers to its "eager" attention (matmul + softmax, which inductor fuses; torch's CPU
    SDPA kernel is slow on tiny heads) and compile with inductor. One graph, every quantized
    layer still runs the C kernel, and the sentence embeddings keep eager mono_quant's accuracy."""
    pytest.importorskip("transformers", reason="the MiniLM demo model needs transformers (make test installs it)")
    from mono_quant.demo import SENTENCES, embed, load_minilm

    model, tokenizer = load_minilm()
    qmodel, _ = mono_quant.dynamic_quantize(model, "int8", validate=False)
    eager = embed(qmodel, tokenizer, SENTENCES)
    layers = sum(isinstance(m, QuantizedLinear) for m in qmodel.modules())
    calls = []
    kernel = K.linear_packed
    monkeypatch.setattr(K, "linear_packed", lambda *args: calls.append(1) or kernel(*args))
    qmodel.set_attn_implementation("eager")
    torch._dynamo.reset()
    try:
        compiled = torch.compile(qmodel, fullgraph=True)
        out = embed(compiled, tokenizer, SENTENCES)
        calls.clear()
        embed(compiled, tokenizer, SENTENCES)
    finally:
        torch._dynamo.reset()
    assert len(calls) == layers
    # inductor's fused float ops round differently in the last bit, which moves a few int8
    # activation roundings (README, Export and compile): close to eager, not equal
    worst = min(cosine(a, b) for a, b in zip(out, eager))
    assert worst > 0.999, worst


def test_dispatch_modes_see_the_operators(kind):
    # Plain eager calls skip the dispatcher (_ops.plain_eager); anything that watches the
    # dispatcher (a TorchDispatchMode: profilers, FlopCounterMode, fake and functional modes)
    # must still see the operator, and get the same result.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    module = MODULES[kind]().eval()
    x = _inputs(kind, 3)
    with torch.no_grad():
        eager = module(x)
        with Record() as record:
            watched = module(x)
    assert f"mono_quant.{_op_name(kind)}.default" in record.ops
    assert torch.equal(watched, eager)
