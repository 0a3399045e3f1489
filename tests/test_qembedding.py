"""Quantized embeddings (``quantize_embeddings=True``): QuantizedEmbedding / QuantizedEmbeddingBag
against nn.Embedding / nn.EmbeddingBag, the option in dynamic_quantize, static_quantize, state
dicts, checkpoints, config files and the CLI, files (both formats), info and validate, tied
heads, refused options, autograd and ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import mono_quant
from mono_quant import QuantizationConfig, dynamic_quantize, load_quantized, save_quantized
from mono_quant.cli import main
from mono_quant.nn import QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedLinear, QuantizedLinearInt4
from mono_quant.validate import validate_file

from helpers import cosine


class Tagger(nn.Module):
    """Token embeddings, a bag of feature ids, a Linear head."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(300, 64, padding_idx=0)
        self.bag = nn.EmbeddingBag(200, 64, mode="sum", padding_idx=1)
        self.head = nn.Linear(64, 300, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids) + self.bag(ids[:, :4] % 200).unsqueeze(1))


IDS = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(1))


def skeleton(tied: bool = False) -> Tagger:
    with torch.device("meta"):
        return Tagger(tied)


# ---- the modules ------------------------------------------------------------------------------


def test_embedding_equals_f_embedding_on_the_dequantized_table(backend):
    float_emb = nn.Embedding(100, 48, padding_idx=2)
    q = QuantizedEmbedding.from_float(float_emb)
    assert q.qweight.dtype == torch.uint8 and q.padding_idx == 2 and q.weight_dtype == torch.float32
    ids = torch.randint(0, 100, (4, 6))
    out = q(ids)
    assert torch.equal(out, F.embedding(ids, q.dequantized_weight()))
    assert torch.equal(out[ids == 2], torch.zeros_like(out[ids == 2]))  # the zero padding row stays exact zeros
    assert cosine(out, float_emb(ids)) > 0.9999
    with pytest.raises(IndexError, match="index out of range"):
        q(torch.tensor([100]))
    with pytest.raises(TypeError, match="int64 or int32 tensor"):
        q(ids.float())


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_embedding_bag_takes_what_nn_embedding_bag_takes(backend, mode, include_last_offset):
    float_bag = nn.EmbeddingBag(100, 40, mode=mode, include_last_offset=include_last_offset, padding_idx=5)
    q = QuantizedEmbeddingBag.from_float(float_bag)
    table = q.dequantized_weight()

    def expected(ids, offsets=None, **kwargs):
        return F.embedding_bag(ids, table, offsets, mode=mode, include_last_offset=include_last_offset, padding_idx=5,
                               **kwargs)

    ids = torch.tensor([5, 3, 7, 5, 5, 9, 11, 2])
    offsets = torch.tensor([0, 3, 3, 5, 8] if include_last_offset else [0, 3, 3, 5])
    torch.testing.assert_close(q(ids, offsets), expected(ids, offsets), rtol=1e-6, atol=1e-6)
    batch = torch.randint(0, 100, (4, 6))  # 2-D: one bag per row
    torch.testing.assert_close(q(batch), expected(batch), rtol=1e-6, atol=1e-6)
    if mode == "sum":
        weights = torch.rand(8)
        torch.testing.assert_close(q(ids, offsets, weights), expected(ids, offsets, per_sample_weights=weights),
                                   rtol=1e-6, atol=1e-6)
    else:
        with pytest.raises(NotImplementedError, match="only supported for mode='sum'"):
            q(ids, offsets, torch.rand(8))
    with pytest.raises(ValueError, match="offsets must be None when input is 2-D"):
        q(batch, offsets)
    with pytest.raises(ValueError, match="needs 1-D offsets"):
        q(ids)


def test_per_sample_weights_that_need_a_gradient_get_one():
    q = QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(50, 16, mode="sum"))
    ids, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
    weights = torch.rand(4, requires_grad=True)
    q(ids, offsets, weights).sum().backward()
    expected = torch.rand(4, requires_grad=True)
    with torch.no_grad():
        expected.copy_(weights)
    F.embedding_bag(ids, q.dequantized_weight(), offsets, mode="sum", per_sample_weights=expected).sum().backward()
    torch.testing.assert_close(weights.grad, expected.grad)


@pytest.mark.parametrize("option", [dict(max_norm=1.0), dict(sparse=True), dict(scale_grad_by_freq=True)])
@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_options_a_quantized_table_cannot_honour_are_refused_or_kept_float(option, cls):
    layer = cls(600, 8, **option)
    quantized = QuantizedEmbedding if cls is nn.Embedding else QuantizedEmbeddingBag
    with pytest.raises(ValueError, match=list(option)[0]):
        quantized.from_float(layer)
    q_model, info = dynamic_quantize(nn.Sequential(layer), quantize_embeddings=True)
    assert type(q_model[0]) is cls and list(option)[0] in info.layers["0"].reason


def test_bf16_tables_return_bf16_rows(backend):
    q = QuantizedEmbedding.from_float(nn.Embedding(64, 32).to(torch.bfloat16))
    out = q(torch.tensor([[1, 63]]))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.embedding(torch.tensor([[1, 63]]), q.dequantized_weight(torch.float32)).bfloat16())


# ---- the option ---------------------------------------------------------------------------------


def test_embeddings_stay_float_by_default_and_the_reason_names_the_option():
    q_model, info = dynamic_quantize(Tagger())
    assert type(q_model.embed) is nn.Embedding and "quantize_embeddings=True" in info.layers["embed"].reason


@pytest.mark.parametrize("dtype, head", [("int8", QuantizedLinear), ("int4", QuantizedLinearInt4)])
def test_quantize_embeddings_makes_int8_tables_next_to_any_linear_format(dtype, head):
    model = Tagger().eval()
    q_model, info = dynamic_quantize(model, dtype, quantize_embeddings=True, group_size=32)
    assert type(q_model.embed) is QuantizedEmbedding and type(q_model.bag) is QuantizedEmbeddingBag
    assert type(q_model.head) is head and type(model.embed) is nn.Embedding  # the original is untouched
    record = info.layers["embed"]
    assert record.scheme == "uint8 per-row asymmetric" and record.sqnr_db > 40
    assert record.bytes_after == 300 * 64 + 300 * 8 and abs(record.details["bits_per_weight"] - 9.0) < 1e-9
    assert info.validation is not None and info.validation.passed
    assert cosine(q_model(IDS), model(IDS)) > (0.999 if dtype == "int8" else 0.99)
    symmetric, _ = dynamic_quantize(model, dtype, quantize_embeddings=True, symmetric=True, group_size=32)
    assert symmetric.embed.qweight.dtype == torch.int8  # an explicit symmetric applies to the tables too


def test_fp16_with_quantize_embeddings_is_refused():
    with pytest.raises(ValueError, match="quantize_embeddings=True .* dtype='fp16'"):
        QuantizationConfig(dtype="fp16", quantize_embeddings=True)
    with pytest.raises(ValueError, match="quantize_embeddings must be True or False"):
        QuantizationConfig(quantize_embeddings="yes")


def test_a_subclass_of_nn_embedding_stays_float_with_the_reason():
    class Scaled(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 8.0

    q_model, info = dynamic_quantize(nn.Sequential(Scaled(100, 16)), quantize_embeddings=True)
    assert type(q_model[0]) is Scaled and "subclasses Embedding" in info.layers["0"].reason


def test_a_tied_head_keeps_both_float_and_tied():
    model = Tagger(tied=True).eval()
    q_model, info = dynamic_quantize(model, quantize_embeddings=True)
    assert type(q_model.embed) is nn.Embedding and type(q_model.head) is nn.Linear
    assert q_model.head.weight is q_model.embed.weight  # still one tensor
    assert "tied" in info.layers["embed"].reason and "tied" in info.layers["head"].reason
    assert type(q_model.bag) is QuantizedEmbeddingBag
    save_quantized(q_model, "tied.safetensors", info)
    loaded = load_quantized("tied.safetensors", skeleton(tied=True))
    assert loaded.head.weight is loaded.embed.weight and torch.equal(loaded(IDS), q_model(IDS))


@pytest.mark.parametrize("inplace", [False, True])
def test_static_quantize_converts_tables_without_calibrating_them(inplace):
    model = Tagger().eval()
    expected = model(IDS)
    batches = [torch.randint(0, 300, (2, 9)) for _ in range(4)]
    q_model, info = mono_quant.static_quantize(model, batches, quantize_embeddings=True, num_samples=6,
                                               progress=False, inplace=inplace, compute_sqnr=not inplace)
    assert type(q_model.embed) is QuantizedEmbedding and type(q_model.bag) is QuantizedEmbeddingBag
    assert type(q_model.head).__name__ == "StaticQuantizedLinear"
    assert info.layers["embed"].quantized and cosine(q_model(IDS), expected) > 0.99
    assert list(info.layers)[:3] == ["embed", "bag", "head"]  # in model order


# ---- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_both_formats(suffix):
    q_model, info = dynamic_quantize(Tagger().eval(), quantize_embeddings=True)
    save_quantized(q_model, f"m{suffix}", info)
    loaded = load_quantized(f"m{suffix}", skeleton())
    assert type(loaded.embed) is QuantizedEmbedding and type(loaded.bag) is QuantizedEmbeddingBag
    assert loaded.embed.padding_idx == 0 and loaded.bag.mode == "sum"
    assert torch.equal(loaded(IDS), q_model(IDS))
    tensors, meta = load_quantized(f"m{suffix}")
    assert meta["layers"]["embed"]["kind"] == "int8_embedding" and meta["layers"]["bag"]["kind"] == "int8_embedding_bag"
    report = validate_file(f"m{suffix}")
    assert report.passed, report


def test_a_file_that_does_not_fit_the_model_is_refused():
    q_model, info = dynamic_quantize(Tagger().eval(), quantize_embeddings=True)
    save_quantized(q_model, "m.safetensors", info)
    other = skeleton()
    other.bag.mode = "max"
    with pytest.raises(mono_quant.errors.CorruptFileError, match="mode='sum' but the model's EmbeddingBag has 'max'"):
        load_quantized("m.safetensors", other)
    q_model.embed.scale[3] = -1.0
    with pytest.raises(ValueError, match="'embed.scale' has 1 value\\(s\\) <= 0"):
        save_quantized(q_model, "bad.safetensors", info)


def test_validate_checks_the_tables():
    model = Tagger().eval()
    q_model, info = dynamic_quantize(model, quantize_embeddings=True, validate=False)
    report = mono_quant.validate(model, q_model, IDS)
    assert report.passed, report
    q_model.embed.zero_point[0] = 300  # outside uint8
    assert not mono_quant.validate(model, q_model, IDS).passed


def test_state_dict_and_checkpoint_tables_load_into_nn_embedding():
    model = Tagger().eval()
    state = model.state_dict()
    q_state, info = dynamic_quantize(state, quantize_embeddings=True)
    assert q_state["embed.weight"].dtype == torch.uint8 and info.layers["embed"].module_type == "Embedding-like"
    assert q_state["bag.weight"].dtype == torch.int8  # named "bag": a Linear-like weight, INT8 per channel
    save_quantized(q_state, "sd.safetensors", info)
    loaded = load_quantized("sd.safetensors", skeleton())
    assert type(loaded.embed) is QuantizedEmbedding and type(loaded.bag) is QuantizedEmbeddingBag
    assert cosine(loaded(IDS), model(IDS)) > 0.999
    save_file(state, "fp32.safetensors")
    streamed = mono_quant.quantize_checkpoint("fp32.safetensors", "q.safetensors", quantize_embeddings=True)
    assert streamed.layers["embed"].scheme == "uint8 per-row asymmetric"
    again = load_quantized("q.safetensors", skeleton())
    assert torch.equal(again(IDS), loaded(IDS))


def test_config_file_and_cli(capsys):
    save_file(Tagger().state_dict(), "fp32.safetensors")
    Path("mono_quant.toml").write_text("quantize_embeddings = true\n")
    assert QuantizationConfig.from_sources().quantize_embeddings is True
    Path("mono_quant.toml").unlink()
    assert main(["quantize", "fp32.safetensors", "plain.safetensors", "-q"]) == 0
    assert main(["quantize", "fp32.safetensors", "q.safetensors", "--quantize-embeddings", "-q"]) == 0
    capsys.readouterr()
    assert load_file("plain.safetensors")["embed.weight"].dtype == torch.float32
    assert load_file("q.safetensors")["embed.weight"].dtype == torch.uint8
    assert main(["inspect", "q.safetensors"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("embed "))
    assert "uint8" in line and "dB" in line


# ---- ONNX ---------------------------------------------------------------------------------------


def test_onnx_exports_the_table_as_int8_and_refuses_bags():
    ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (benchmark extra)")
    pytest.importorskip("onnx")
    from mono_quant.onnx_export import export_onnx

    q = QuantizedEmbedding.from_float(nn.Embedding(500, 64))
    path = export_onnx(q, (IDS,), "e.onnx")
    assert path.stat().st_size < 500 * 64 * 1.2  # the int8 table, not a float copy
    out = ort.InferenceSession(str(path)).run(None, {"input": IDS.numpy()})[0]
    assert torch.equal(torch.from_numpy(out), q(IDS))
    bag = QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(50, 8))
    with pytest.raises(Exception, match="ONNX has no bag reduction"):
        export_onnx(bag, (torch.randint(0, 50, (2, 3)),), "b.onnx")


def test_gptq_quantize_converts_tables_data_free():
    model = Tagger().eval()
    batches = [torch.randint(0, 300, (2, 9)) for _ in range(3)]
    q_model, info = mono_quant.gptq_quantize(model, batches, quantize_embeddings=True, group_size=32,
                                             num_samples=4, progress=False)
    assert type(q_model.embed) is QuantizedEmbedding and type(q_model.bag) is QuantizedEmbeddingBag
    assert info.layers["embed"].scheme == "uint8 per-row asymmetric"


@pytest.mark.parametrize("inplace", [False, True])
def test_a_tied_state_dict_keeps_both_float_and_loads_tied(inplace):
    model = Tagger(tied=True).eval()
    state = model.state_dict()  # one tensor under "embed.weight" and "head.weight"
    q_state, info = dynamic_quantize(state if inplace else dict(state), quantize_embeddings=True, inplace=inplace)
    assert q_state["embed.weight"].dtype == q_state["head.weight"].dtype == torch.float32
    assert q_state["embed.weight"].data_ptr() == q_state["head.weight"].data_ptr()  # still one tensor
    assert info.validation is None or info.validation.passed
    assert "tied" in info.layers["embed"].reason and "tied" in info.layers["head"].reason
    save_quantized(q_state, "tied.pt", info)
    loaded = load_quantized("tied.pt", skeleton(tied=True))
    assert loaded.head.weight is loaded.embed.weight and torch.equal(loaded.embed.weight, model.embed.weight)
    assert cosine(loaded(IDS), model(IDS)) > 0.999  # "bag" (a Linear-like name) is INT8
    torch.save(Tagger(tied=True).state_dict(), "fp32.pt")
    streamed = mono_quant.quantize_checkpoint("fp32.pt", "q.safetensors", quantize_embeddings=True)
    assert not streamed.layers["embed"].quantized and not streamed.layers["head"].quantized
