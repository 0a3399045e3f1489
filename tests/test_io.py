"""save_quantized / load_quantized: both formats, exact round trips, meta skeletons, ties, metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, save_quantized
from mono_quant.nn import QuantizedConv2d, QuantizedLinear

from helpers import assert_same_snapshot, make_cnn, make_mlp, snapshot
from io_helpers import SharedBlock, TiedLM, int4_quantize_linears

SUFFIXES = [".safetensors", ".pt"]
CASES = {
    "mlp-int8": (make_mlp, lambda: torch.randn(4, 64), {"dtype": "int8"}),
    "mlp-uint8-per-tensor": (make_mlp, lambda: torch.randn(4, 64), {"symmetric": False, "per_channel": False}),
    "cnn-int8": (make_cnn, lambda: torch.randn(2, 3, 8, 8), {"min_params": 0}),
    "mlp-int4": (make_mlp, lambda: torch.randn(4, 64), {"dtype": "int4", "group_size": 32}),
    "cnn-int4-with-int8-fallbacks": (make_cnn, lambda: torch.randn(2, 3, 8, 8),
                                     {"dtype": "int4", "group_size": 64, "symmetric": False, "min_params": 0}),
    "cnn-fp16": (make_cnn, lambda: torch.randn(2, 3, 8, 8).half(), {"dtype": "fp16"}),
    "tied-lm-int8": (TiedLM, lambda: torch.randint(0, 50, (2, 8)), {"min_params": 0}),
    "tied-lm-fp16": (TiedLM, lambda: torch.randint(0, 50, (2, 8)), {"dtype": "fp16"}),
}


def meta_skeleton(factory):
    with torch.device("meta"):
        return factory()


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("case", CASES)
def test_round_trip_into_a_meta_skeleton_is_bit_exact(tmp_path, suffix, case):
    factory, make_input, options = CASES[case]
    qmodel, info = dynamic_quantize(factory().eval(), **options)
    path = save_quantized(qmodel, tmp_path / f"model{suffix}", info)
    skeleton = meta_skeleton(factory).eval()
    loaded = load_quantized(path, skeleton)
    assert loaded is skeleton  # filled in place
    assert [(n, type(m)) for n, m in loaded.named_modules()] == [(n, type(m)) for n, m in qmodel.named_modules()]
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    for key, tensor in qmodel.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), key
    x = make_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_round_trip_is_bit_exact(tmp_path, suffix, symmetric):
    from mono_quant.nn.qlinear_int4 import QuantizedLinearInt4

    qmodel = int4_quantize_linears(make_mlp().eval(), group_size=32, symmetric=symmetric)
    assert isinstance(qmodel[0], QuantizedLinearInt4)
    path = save_quantized(qmodel, tmp_path / f"m{suffix}")
    loaded = load_quantized(path, meta_skeleton(make_mlp).eval())
    assert isinstance(loaded[3], QuantizedLinearInt4)
    assert (loaded[3].group_size, loaded[3].symmetric) == (32, symmetric)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    _, meta = load_quantized(path)
    assert meta["dtype"] == "int4" and meta["group_size"] == "32"
    assert meta["layers"]["0"] == {
        "kind": "int4_linear", "original_shape": [128, 64], "bias": True, "symmetric": symmetric, "group_size": 32,
        "scheme": f"int4 group-32 {'symmetric' if symmetric else 'asymmetric'}", "original_dtype": None,
        "sqnr_db": None,
    }


def test_int4_state_dict_layout_is_recognised(tmp_path):
    qmodel = int4_quantize_linears(make_mlp().eval(), group_size=64)
    state = {}
    for key, tensor in qmodel.state_dict().items():  # the state_dict-mode names
        prefix, _, attr = key.rpartition(".")
        attr = {"qweight": "weight", "scale": "weight_scale", "zero_point": "weight_zero_point"}.get(attr, attr)
        state[f"{prefix}.{attr}"] = tensor
    save_quantized(state, tmp_path / "sd.safetensors")
    _, meta = load_quantized(tmp_path / "sd.safetensors")
    assert meta["layout"] == "state_dict" and meta["layers"]["3"]["kind"] == "int4_linear"
    assert meta["layers"]["3"]["group_size"] == 64
    loaded = load_quantized(tmp_path / "sd.safetensors", meta_skeleton(make_mlp).eval())
    x = torch.randn(2, 64)
    assert torch.equal(loaded(x), qmodel(x))


@pytest.mark.parametrize("activation_symmetric", [False, True])
def test_static_models_round_trip(tmp_path, activation_symmetric):
    from mono_quant import static_quantize
    from mono_quant.nn import StaticQuantizedConv2d, StaticQuantizedLinear

    model = make_cnn().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    qmodel, info = static_quantize(model, data, min_params=0, progress=False,
                                   activation_symmetric=activation_symmetric)
    path = save_quantized(qmodel, tmp_path / "static.safetensors", info)
    _, meta = load_quantized(path)
    assert meta["layers"]["0"]["kind"] == "static_int8_conv2d" and meta["layers"]["6"]["kind"] == "static_int8_linear"
    assert meta["layers"]["6"]["activation_symmetric"] is activation_symmetric
    loaded = load_quantized(path, meta_skeleton(make_cnn).eval())
    assert isinstance(loaded[0], StaticQuantizedConv2d) and isinstance(loaded[6], StaticQuantizedLinear)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_quantized_layers_never_allocate_float_weights(tmp_path):
    from torch.profiler import ProfilerActivity, profile

    qmodel, info = dynamic_quantize(make_mlp())
    save_quantized(qmodel, tmp_path / "m.safetensors", info)
    skeleton = meta_skeleton(make_mlp)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        load_quantized(tmp_path / "m.safetensors", skeleton)
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated < 128 * 32 * 4  # less than the smaller float weight: tensors are read straight into place
    assert isinstance(skeleton[0], QuantizedLinear) and skeleton[0].qweight.device.type == "cpu"


def test_cpu_skeleton_works_and_keeps_flags(tmp_path):
    model = make_cnn().train()
    model[0].weight.requires_grad_(False)
    qmodel, info = dynamic_quantize(model, "fp16")
    save_quantized(qmodel, tmp_path / "m.pt", info)
    skeleton = make_cnn().train()
    skeleton[0].weight.requires_grad_(False)
    loaded = load_quantized(tmp_path / "m.pt", skeleton)
    assert loaded.training and loaded[1].training
    assert loaded[0].weight.dtype == torch.float16 and not loaded[0].weight.requires_grad
    assert isinstance(loaded[3].weight, nn.Parameter) and loaded[3].weight.requires_grad
    assert loaded[1].num_batches_tracked.dtype == torch.int64


def test_conv_keeps_its_geometry(tmp_path):
    def factory():
        return nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
                             nn.Conv2d(8, 8, 3, padding="same", dilation=2, bias=False))

    qmodel, info = dynamic_quantize(factory(), min_params=0)
    save_quantized(qmodel, tmp_path / "c.safetensors", info)
    loaded = load_quantized(tmp_path / "c.safetensors", meta_skeleton(factory))
    assert isinstance(loaded[0], QuantizedConv2d) and loaded[0].padding_mode == "reflect" and loaded[1].bias is None
    x = torch.randn(1, 4, 9, 9)
    assert torch.equal(loaded(x), qmodel(x))


def test_root_module_that_is_a_quantized_layer(tmp_path):
    qlinear, info = dynamic_quantize(nn.Linear(64, 32))
    save_quantized(qlinear, tmp_path / "l.safetensors", info)
    skeleton = meta_skeleton(lambda: nn.Linear(64, 32))
    loaded = load_quantized(tmp_path / "l.safetensors", skeleton)
    assert isinstance(loaded, QuantizedLinear) and loaded is not skeleton
    x = torch.randn(3, 64)
    assert torch.equal(loaded(x), qlinear(x))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    from safetensors import safe_open

    qmodel, info = dynamic_quantize(TiedLM(), min_params=0)
    assert "head" in info.skipped  # tied, so it stays float
    save_quantized(qmodel, tmp_path / "t.safetensors", info)
    with safe_open(tmp_path / "t.safetensors", "pt") as handle:
        assert "head.weight" not in handle.keys() and "embed.weight" in handle.keys()
        assert json.loads(handle.metadata()["aliases"]) == {"head.weight": "embed.weight"}
    loaded = load_quantized(tmp_path / "t.safetensors", meta_skeleton(TiedLM))
    assert loaded.head.weight is loaded.embed.weight


def test_a_module_shared_under_two_names(tmp_path):
    qmodel, info = dynamic_quantize(SharedBlock(), min_params=0)
    assert qmodel.first is qmodel.second and isinstance(qmodel.first, QuantizedLinear)
    save_quantized(qmodel, tmp_path / "s.safetensors", info)
    loaded = load_quantized(tmp_path / "s.safetensors", meta_skeleton(SharedBlock))
    assert loaded.first is loaded.second and isinstance(loaded.first, QuantizedLinear)
    x = torch.randn(2, 32)
    assert torch.equal(loaded(x), qmodel(x))


def test_views_sharing_memory_are_saved_as_separate_tensors(tmp_path):
    base = torch.randn(8, 8)
    state = {"a.weight": base[:4], "b.weight": base[4:], "c.weight": base.t(), "d.weight": base}
    for suffix in SUFFIXES:
        save_quantized(state, tmp_path / f"v{suffix}")
        loaded, meta = load_quantized(tmp_path / f"v{suffix}")
        assert meta["aliases"] == {} and all(torch.equal(loaded[k], v) for k, v in state.items())
    # .pt does not carry the whole 8x8 storage for each 4x8 view
    blob = torch.load(tmp_path / "v.pt", weights_only=True)["tensors"]["a.weight"]
    assert blob.untyped_storage().nbytes() == 4 * 8 * 4


def test_state_dict_files_load_into_a_model(tmp_path):
    model = make_cnn().eval()
    qsd, info = dynamic_quantize(model.state_dict(), min_params=0)
    save_quantized(qsd, tmp_path / "sd.safetensors", info)
    tensors, meta = load_quantized(tmp_path / "sd.safetensors")
    assert meta["layout"] == "state_dict" and meta["layers"]["0"]["kind"] == "int8_conv2d"
    assert tensors.keys() == qsd.keys() and all(torch.equal(tensors[k], qsd[k]) for k in qsd)
    loaded = load_quantized(tmp_path / "sd.safetensors", meta_skeleton(make_cnn).eval())
    qmodel, _ = dynamic_quantize(model, min_params=0)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), qmodel(x))


def test_metadata_describes_the_run(tmp_path):
    qmodel, info = dynamic_quantize(make_mlp(), symmetric=False)
    save_quantized(qmodel, tmp_path / "m.safetensors", info)
    _, meta = load_quantized(tmp_path / "m.safetensors")
    assert meta["format"] == "mono_quant" and meta["format_version"] == "1" and meta["layout"] == "module"
    assert meta["mono_quant_version"] == mono_quant.__version__ and meta["torch_version"] == str(torch.__version__)
    assert (meta["dtype"], meta["group_size"], meta["scheme"]) == ("int8", "none", "uint8 per-channel asymmetric")
    assert meta["model_class"] == "torch.nn.modules.container.Sequential"
    fc = meta["layers"]["0"]
    assert fc == {
        "kind": "int8_linear", "original_shape": [128, 64], "bias": True, "symmetric": False, "per_channel": True,
        "scheme": "uint8 per-channel asymmetric", "original_dtype": "float32", "sqnr_db": info.layers["0"].sqnr_db,
    }
    save_quantized(qmodel, tmp_path / "bare.safetensors")  # without info: no SQNR, no original dtype
    _, bare = load_quantized(tmp_path / "bare.safetensors")
    assert bare["layers"]["0"]["sqnr_db"] is None and bare["layers"]["0"]["original_dtype"] is None
    assert bare["dtype"] == "int8" and bare["model_class"] == meta["model_class"]


def test_safetensors_files_are_readable_without_mono_quant(tmp_path):
    qmodel, info = dynamic_quantize(TiedLM(), min_params=0)
    path = save_quantized(qmodel, tmp_path / "m.safetensors", info)
    script = textwrap.dedent(f"""
        import json, sys
        from safetensors.torch import load_file
        from safetensors import safe_open
        assert "mono_quant" not in sys.modules
        tensors = load_file({str(path)!r})
        with safe_open({str(path)!r}, "pt") as f:
            meta = f.metadata()
        layers = {{k[6:]: json.loads(v) for k, v in meta.items() if k.startswith("layer:")}}
        print(json.dumps({{"keys": sorted(tensors), "dtypes": {{k: str(t.dtype) for k, t in tensors.items()}},
                          "fc1": layers["fc1"], "format": meta["format"]}}))
    """)
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["format"] == "mono_quant" and seen["fc1"]["kind"] == "int8_linear"
    assert seen["dtypes"]["fc1.qweight"] == "torch.int8" and seen["dtypes"]["fc1.scale"] == "torch.float32"
    assert seen["dtypes"]["fc1.zero_point"] == "torch.int32" and "head.weight" not in seen["keys"]


def test_pt_files_are_plain_tensors_and_strings(tmp_path):
    qmodel, info = dynamic_quantize(make_cnn(), min_params=0)
    save_quantized(qmodel, tmp_path / "m.pt", info)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(blob) == {"tensors", "metadata"}
    assert all(type(t) is torch.Tensor for t in blob["tensors"].values())
    assert all(isinstance(v, str) for v in blob["metadata"].values())
    assert blob["tensors"]["0.qweight"].dtype == torch.int8


def test_path_and_dependency_errors(tmp_path, monkeypatch):
    qmodel, _ = dynamic_quantize(make_mlp())
    with pytest.raises(ValueError, match=r"unknown file type '\.bin'; use a path ending in \.safetensors or \.pt"):
        save_quantized(qmodel, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="ending in .safetensors or .pt"):
        load_quantized(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no such file; check the path"):
        load_quantized(tmp_path / "missing.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mono_quant\[safetensors\]'"):
        save_quantized(qmodel, tmp_path / "m.safetensors")
    save_quantized(qmodel, tmp_path / "m.pt")  # .pt needs nothing extra
    save_quantized(qmodel, tmp_path / "m2.pt")
    assert not list(tmp_path.glob("*.partial"))


def test_loading_never_needs_the_safetensors_package(tmp_path, monkeypatch):
    qmodel, info = dynamic_quantize(make_mlp())
    save_quantized(qmodel, tmp_path / "m.safetensors", info)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    loaded = load_quantized(tmp_path / "m.safetensors", meta_skeleton(make_mlp))
    assert isinstance(loaded[0], QuantizedLinear)


def test_what_cannot_be_saved():
    with torch.device("meta"):
        model = make_mlp()
    with pytest.raises(ValueError, match="'0.weight' is on the meta device"):
        save_quantized(model, "m.pt")
    with pytest.raises(TypeError, match="entry 'step' is a int; only tensors"):
        save_quantized({"w": torch.zeros(2), "step": 3}, "m.pt")
    with pytest.raises(ValueError, match="complex64 cannot be stored"):
        save_quantized({"w": torch.zeros(2, dtype=torch.complex64)}, "m.pt")
    half, half_info = dynamic_quantize(make_mlp(), "fp16")
    int8, _ = dynamic_quantize(make_mlp())
    with pytest.raises(ValueError, match="info does not describe this model"):
        save_quantized(int8, "m.pt", half_info)


def test_mismatched_skeletons_are_refused_and_left_untouched(tmp_path):
    qmodel, info = dynamic_quantize(make_mlp())
    path = save_quantized(qmodel, tmp_path / "m.safetensors", info)
    cases = [
        (nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 32)),
         r"layer '0' \(int8_linear\): the file holds a \[128, 64\] weight but the model's Linear is \[100, 64\]"),
        (nn.Sequential(nn.Linear(64, 128, bias=False), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 32)),
         "the file has bias but the model's layer has none"),
        (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Conv2d(128, 32, 1)),
         r"layer '3' \(int8_linear\) replaces a Linear, but the model has a Conv2d there"),
        (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128)),
         "layer '3' .* has no module of that name in the model"),
        (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(64), nn.Linear(128, 32)),
         r"tensor '2.weight' has shape \[128\] but the model's is \[64\]"),
        (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Identity(), nn.Linear(128, 32)),
         r"unexpected tensor\(s\) '2.bias', '2.weight'"),
        (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 32), nn.LayerNorm(32)),
         r"missing tensor\(s\) '4.weight', '4.bias': the model has them, the file does not"),
    ]
    for skeleton, message in cases:
        before = snapshot(skeleton)
        with pytest.raises(CorruptFileError, match=message) as caught:
            load_quantized(path, skeleton)
        assert str(caught.value).startswith(str(path))
        assert_same_snapshot(before, snapshot(skeleton))


def test_int_buffers_must_keep_their_dtype(tmp_path):
    model = make_cnn()
    qsd, info = dynamic_quantize(model.state_dict(), "fp16")
    qsd["1.num_batches_tracked"] = qsd["1.num_batches_tracked"].to(torch.int32)
    save_quantized(qsd, tmp_path / "m.safetensors")
    with pytest.raises(CorruptFileError, match="'1.num_batches_tracked' is torch.int32 but the model's is torch.int64"):
        load_quantized(tmp_path / "m.safetensors", make_cnn())


def test_meta_skeleton_with_non_persistent_buffers(tmp_path):
    class WithCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.register_buffer("cache", torch.ones(4), persistent=False)

    qmodel, info = dynamic_quantize(WithCache())
    save_quantized(qmodel, tmp_path / "m.safetensors", info)
    with pytest.raises(ValueError, match="'cache' is on the meta device and files do not hold it"):
        load_quantized(tmp_path / "m.safetensors", meta_skeleton(WithCache))
    loaded = load_quantized(tmp_path / "m.safetensors", WithCache())  # a CPU skeleton keeps its own
    assert torch.equal(loaded.cache, torch.ones(4)) and isinstance(loaded.fc, QuantizedLinear)


def test_load_quantized_checks_its_model_argument(tmp_path):
    qmodel, _ = dynamic_quantize(make_mlp())
    save_quantized(qmodel, tmp_path / "m.pt")
    with pytest.raises(TypeError, match="model must be an nn.Module skeleton"):
        load_quantized(tmp_path / "m.pt", {"0.weight": torch.zeros(1)})
