"""quantize_checkpoint into a folder: shards named as the source's, an index, the same tensors
as a single-file output, jobs > 1 in worker processes with the same bytes, failures cleaned up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mono_quant import CorruptFileError, load_quantized, quantize_checkpoint
from mono_quant.cli import main
from mono_quant.io import read_quantized

from io_helpers import checkpoint_state


def shard(state, folder: Path, parts: int) -> Path:
    """``state`` split over ``parts`` files (a layer's weight and bias may land in different
    shards), with the index and a transformers-like config.json and tokenizer file."""
    folder.mkdir()
    names = list(state)
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = names[i::parts]
        save_file({n: state[n] for n in chunk}, folder / name)
        weight_map |= {n: name for n in chunk}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 32}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for name in sorted(set(index["weight_map"].values())):
        tensors, _ = read_quantized(folder / name)  # every shard is a checked mono_quant file
        assert {k for k, v in index["weight_map"].items() if v == name} == set(tensors)
        out |= tensors
    return out


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_folder_output_has_the_tensors_of_a_single_file_output(dtype):
    state = checkpoint_state()
    src = shard(state, Path("src"), 3)
    info = quantize_checkpoint(src, "out", dtype, group_size=32)
    single = quantize_checkpoint(src, "single.safetensors", dtype, group_size=32)
    got, (want, _) = folder_tensors(Path("out")), load_quantized("single.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(info.quantized) == sorted(single.quantized)
    assert sorted(os.listdir("out")) == sorted(os.listdir("src"))  # same shard names, config, tokenizer
    config = json.loads(Path("out/config.json").read_text())
    assert config["hidden_size"] == 32
    quantization = config["quantization_config"]
    assert (quantization["quant_method"], quantization["layout"], quantization["dtype"]) == ("mono_quant", "state_dict", dtype)
    assert set(quantization["layers"]) == set(info.quantized)
    # a layer whose weight and bias sit in different source shards is written whole, with its weight
    index = json.loads(Path("out/model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.conv.weight"] == index["model.conv.bias"] == index["model.conv.weight_scale"]


def test_jobs_write_the_same_bytes_as_one_process():
    src = shard(checkpoint_state(), Path("src"), 3)
    one = quantize_checkpoint(src, "one", "int4", group_size=32)
    info = quantize_checkpoint(src, "two", "int4", group_size=32, jobs=2)
    for name in os.listdir("one"):
        assert Path("one", name).read_bytes() == Path("two", name).read_bytes(), name
    assert not [n for n in os.listdir("two") if n.startswith(".quantizing") or n.endswith(".quantizing")]
    assert info.quantized == one.quantized and len(info.quantized) == 8


def test_a_failing_worker_raises_its_error_and_leaves_no_files():
    state = checkpoint_state()
    state["model.layers.1.mlp.up.bias"] = torch.zeros(7)  # does not fit the weight [128, 32]
    src = shard(state, Path("src"), 3)
    with pytest.raises(CorruptFileError, match=r"model.layers.1.mlp.up.*do not fit together"):
        quantize_checkpoint(src, "out", "int8", jobs=2)
    assert os.listdir("out") == []


def test_bad_jobs_and_unsendable_options():
    src = shard(checkpoint_state(), Path("src"), 2)
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        quantize_checkpoint(src, "out", jobs=0)
    with pytest.raises(ValueError, match="write to a folder"):
        quantize_checkpoint(src, "out.safetensors", jobs=2)
    with pytest.raises(ValueError, match="define filter_fn at the top level of an importable module"):
        quantize_checkpoint(src, "out", jobs=2, filter_fn=lambda name, module: True)


def test_an_already_quantized_config_is_refused():
    src = shard(checkpoint_state(), Path("src"), 2)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ValueError, match="already has a quantization_config"):
        quantize_checkpoint(src, "out")


def test_cli_quantizes_into_a_folder(capsys):
    src = shard(checkpoint_state(), Path("src"), 2)
    assert main(["quantize", str(src), "out", "--dtype", "int4", "--group-size", "32", "--jobs", "1", "-q"]) == 0
    assert "wrote out (" in capsys.readouterr().out
    assert Path("out/model.safetensors.index.json").is_file()
    assert main(["quantize", str(src), "out2", "--jobs", "0"]) == 2
    assert "--jobs: must be an integer >= 1" in capsys.readouterr().err


def test_single_file_source_into_a_folder_is_one_model_safetensors():
    save_file(checkpoint_state(), "model.safetensors")
    quantize_checkpoint("model.safetensors", "out/", "int8")
    assert os.listdir("out") == ["model.safetensors"]
