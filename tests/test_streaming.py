"""quantize_checkpoint: the streamed file equals in-memory quantization, for single and sharded
checkpoints; the streaming safetensors writer; bad sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, quantize_checkpoint, save_quantized
from mono_quant import _safetensors as st
from mono_quant.io import read_quantized

from helpers import make_cnn
from io_helpers import checkpoint_state

OPTIONS = {
    "int4": {"dtype": "int4", "group_size": 32},
    "int4-asym-g64": {"dtype": "int4", "group_size": 64, "symmetric": False},
    "int8": {"dtype": "int8"},
    "int8-asym-per-tensor": {"dtype": "int8", "symmetric": False, "per_channel": False},
    "int8-skip": {"dtype": "int8", "modules_to_not_convert": ["lm_head"], "min_params": 0},
    "fp16": {"dtype": "fp16"},
}


def in_memory(state, options):
    """What dynamic_quantize + save_quantized give for the same tensors (the reference)."""
    qsd, info = dynamic_quantize(state, **options)
    save_quantized(qsd, "reference.safetensors", info)
    return qsd, info


def assert_same_file(path, reference="reference.safetensors"):
    got, got_meta = read_quantized(path)
    want, want_meta = read_quantized(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert got_meta.as_dict() == want_meta.as_dict()


def needs_scheme(dtype: str) -> None:
    from mono_quant.schemes import scheme_names

    if dtype not in scheme_names():
        pytest.skip(f"the {dtype!r} scheme is not registered in this build")


@pytest.mark.parametrize("case", OPTIONS)
def test_single_file_matches_in_memory_quantization(case):
    needs_scheme(OPTIONS[case]["dtype"])
    state = checkpoint_state()
    save_file(state, "model.safetensors")
    info = quantize_checkpoint("model.safetensors", "out.safetensors", **OPTIONS[case])
    qsd, want_info = in_memory(load_file("model.safetensors"), OPTIONS[case])
    assert_same_file("out.safetensors")
    plain = load_file("out.safetensors")  # the safetensors library alone
    assert plain.keys() == qsd.keys() and all(torch.equal(plain[k], qsd[k]) for k in qsd)
    assert {n: (r.status, r.sqnr_db) for n, r in info.layers.items()} == {
        n: (r.status, r.sqnr_db) for n, r in want_info.layers.items()}
    assert not [p for p in os.listdir() if p.endswith(".partial")]


def _shard(state, folder: Path, parts: int) -> Path:
    """Split ``state`` over ``parts`` files (a layer's weight and bias may land in different
    shards) and write the index."""
    folder.mkdir()
    names = list(state)
    weight_map = {}
    for i in range(parts):
        shard = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = names[i::parts]
        save_file({n: state[n] for n in chunk}, folder / shard)
        weight_map |= {n: shard for n in chunk}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_sharded_checkpoint_matches_in_memory_quantization(dtype):
    needs_scheme(dtype)
    state = checkpoint_state()
    index = _shard(state, Path("sharded"), 3)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert weight_map["model.conv.weight"] != weight_map["model.conv.bias"]  # a layer spans two shards
    quantize_checkpoint(index, "from-index.safetensors", dtype)
    quantize_checkpoint("sharded", "from-folder.safetensors", dtype)  # the folder works too
    in_memory(state, {"dtype": dtype})
    assert_same_file("from-index.safetensors")
    assert_same_file("from-folder.safetensors")


def test_pt_sources_and_destinations():
    state = checkpoint_state()
    torch.save(state, "model.pt")
    quantize_checkpoint("model.pt", "out.pt", "int8")
    in_memory(state, {"dtype": "int8"})
    assert_same_file("out.pt")
    quantize_checkpoint("model.pt", "out.safetensors", "int8")
    assert_same_file("out.safetensors")


def test_options_come_from_a_config_file():
    save_file(checkpoint_state(), "model.safetensors")
    Path("quant.toml").write_text('dtype = "int8"\nmodules_to_not_convert = ["lm_head"]\nsymmetric = false\n')
    info = quantize_checkpoint("model.safetensors", "out.safetensors", config="quant.toml")
    assert info.skipped["lm_head"] == "listed in modules_to_not_convert ('lm_head')"
    assert load_file("out.safetensors")["model.layers.0.mlp.up.weight"].dtype == torch.uint8


def test_a_streamed_model_loads_into_a_meta_skeleton_and_runs_like_dynamic_quantize():
    model = make_cnn().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "cnn.safetensors")
    quantize_checkpoint("cnn.safetensors", "cnn-int8.safetensors", "int8", min_params=0)
    with torch.device("meta"):
        skeleton = make_cnn().eval()
    loaded = load_quantized("cnn-int8.safetensors", skeleton)
    qmodel, _ = dynamic_quantize(model, min_params=0)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_a_failure_leaves_no_output(monkeypatch):
    from mono_quant.schemes.int8 import Int8Scheme

    save_file(checkpoint_state(), "model.safetensors")
    Path("out.safetensors").write_bytes(b"old")
    calls = []

    def boom(self, prefix, tensors):
        calls.append(prefix)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(self, prefix, tensors)

    real = Int8Scheme.convert_state
    monkeypatch.setattr(Int8Scheme, "convert_state", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        quantize_checkpoint("model.safetensors", "out.safetensors", "int8")
    assert Path("out.safetensors").read_bytes() == b"old"
    assert sorted(os.listdir()) == ["model.safetensors", "out.safetensors"]


def test_source_errors():
    state = checkpoint_state()
    save_file(state, "model.safetensors")
    with pytest.raises(ValueError, match="is also the source"):
        quantize_checkpoint("model.safetensors", "./model.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file or folder; check the path"):
        quantize_checkpoint("nope.safetensors", "out.safetensors")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        Path("model.txt").write_text("x")
        quantize_checkpoint("model.txt", "out.safetensors")
    with pytest.raises(ValueError, match="use a path ending in .safetensors or .pt"):
        quantize_checkpoint("model.safetensors", "out.gguf")
    Path("two").mkdir()
    save_file(state, "two/a.safetensors")
    save_file(state, "two/b.safetensors")
    with pytest.raises(ValueError, match="expected one .*found 2; pass the file itself"):
        quantize_checkpoint("two", "out.safetensors")
    Path("model.pt").write_bytes(b"not a pickle")
    with pytest.raises(CorruptFileError, match="cannot read it"):
        quantize_checkpoint("model.pt", "out.safetensors")
    torch.save({"weights": [1, 2]}, "model.pt")
    with pytest.raises(CorruptFileError, match="not a state_dict"):
        quantize_checkpoint("model.pt", "out.safetensors")
    Path("model.safetensors").write_bytes(Path("model.safetensors").read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="truncated"):
        quantize_checkpoint("model.safetensors", "out.safetensors")


INDEX_CASES = {
    "not-json": ("{", "the index is not valid JSON"),
    "no-weight-map": ('{"metadata": {}}', "no 'weight_map' object"),
    "path-traversal": ('{"weight_map": {"w": "../model.safetensors"}}', "must be a file name in the index's folder"),
    "missing-shard": ('{"weight_map": {"w": "gone.safetensors"}}', "does not exist next to the index"),
    "wrong-shard": ('{"weight_map": {"nowhere": "shard.safetensors"}}', "'nowhere' is mapped to 'shard.safetensors'"),
    "unlisted": ('{"weight_map": {"a": "shard.safetensors"}}', "holds 'b', which the weight_map does not list"),
}


@pytest.mark.parametrize("case", INDEX_CASES)
def test_bad_indexes(case):
    text, message = INDEX_CASES[case]
    Path("set").mkdir()
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, "set/shard.safetensors")
    Path("set/model.safetensors.index.json").write_text(text)
    with pytest.raises(CorruptFileError, match=message):
        quantize_checkpoint("set/model.safetensors.index.json", "out.safetensors")


def test_streaming_writer_round_trips_every_dtype():
    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(2).double(), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "i32": torch.tensor([1 << 30]),
        "i64": torch.tensor([1 << 40]), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5), "strided": torch.randn(4, 6).t(),
    }
    with st.StreamingWriter("w.safetensors") as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        with pytest.raises(ValueError, match="used twice"):
            writer.write("f32", tensors["f32"])
        writer.finish({"note": "hi"})
    plain = load_file("w.safetensors")
    assert plain.keys() == tensors.keys()
    assert all(plain[k].dtype == t.dtype and torch.equal(plain[k], t) for k, t in tensors.items())
    with safe_open("w.safetensors", "pt") as handle:
        assert handle.metadata() == {"note": "hi"}
    assert (8 + int.from_bytes(Path("w.safetensors").read_bytes()[:8], "little")) % 8 == 0  # aligned data
    assert os.listdir() == ["w.safetensors"]


def test_streaming_writer_abort_leaves_nothing():
    with pytest.raises(KeyError):
        with st.StreamingWriter("w.safetensors") as writer:
            writer.write("a", torch.zeros(3))
            raise KeyError("stop")
    assert os.listdir() == []
