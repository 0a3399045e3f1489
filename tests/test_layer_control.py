"""Per-layer control: filter_fn, layer_config overrides (also from a config file), warnings
for patterns that match no layer."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mono_quant import QuantizationConfig, dynamic_quantize, load_quantized, quantize_checkpoint, save_quantized
from mono_quant import static_quantize
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
        self.mlp = nn.Linear(128, 256)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(256, 96)

    def forward(self, x):
        for block in self.layers:
            x = block.attention(x)
            x = block.mlp(x)[..., :128]
        return self.lm_head(torch.cat([x, x], -1))


def test_filter_fn_decides_per_layer_and_sees_the_module():
    seen = []

    def keep(name, module):
        seen.append((name, type(module).__name__))
        return not name.startswith("layers.1")

    q, info = dynamic_quantize(Tiny(), "int8", filter_fn=keep)
    assert isinstance(q.layers[0].mlp, QuantizedLinear) and isinstance(q.lm_head, QuantizedLinear)
    assert type(q.layers[1].mlp) is nn.Linear
    assert info.skipped["layers.1.mlp"] == "filter_fn returned False"
    assert ("layers.0.mlp", "Linear") in seen


def test_filter_fn_gets_none_for_state_dicts_and_must_return_a_bool():
    calls = []
    _, info = dynamic_quantize(Tiny().state_dict(), filter_fn=lambda n, m: calls.append(m) or n != "lm_head")
    assert set(calls) == {None} and info.skipped["lm_head"] == "filter_fn returned False"
    with pytest.raises(TypeError, match="filter_fn must return True or False; it returned None for layer"):
        dynamic_quantize(Tiny(), filter_fn=lambda n, m: None)


def test_layer_config_sets_dtype_and_group_size_per_layer():
    model = Tiny()
    q, info = dynamic_quantize(model, "int4", layer_config={"lm_head": "int8", "*.attention.*": {"group_size": 32}})
    assert isinstance(q.lm_head, QuantizedLinear)
    assert isinstance(q.layers[0].mlp, QuantizedLinearInt4) and q.layers[0].mlp.group_size == 128
    assert q.layers[1].attention[1].group_size == 32
    assert info.layers["layers.0.attention.0"].details["group_size"] == 32
    assert info.layers["lm_head"].dtype == "int8"
    # the same layers quantized one by one with those options give the same modules
    alone, _ = dynamic_quantize(model.layers[1].attention[1], "int4", group_size=32, min_params=0)
    assert torch.equal(alone.packed, q.layers[1].attention[1].packed)
    x = torch.randn(2, 128)
    assert torch.isfinite(q(x)).all()


def test_first_matching_pattern_wins():
    q, _ = dynamic_quantize(Tiny(), "int4", layer_config={"layers.0.*": {"group_size": 64}, "*.attention.*": "int8"})
    assert q.layers[0].attention[0].group_size == 64
    assert isinstance(q.layers[1].attention[0], QuantizedLinear)


def test_layer_config_round_trips_through_a_file():
    q, info = dynamic_quantize(Tiny(), "int4", layer_config={"lm_head": {"dtype": "int8", "symmetric": False}})
    save_quantized(q, "m.safetensors", info)
    with torch.device("meta"):
        skeleton = Tiny()
    loaded = load_quantized("m.safetensors", skeleton)
    assert isinstance(loaded.lm_head, QuantizedLinear) and not loaded.lm_head.symmetric
    x = torch.randn(3, 128)
    assert torch.equal(loaded(x), q(x))


def test_layer_config_applies_to_state_dicts_and_checkpoints():
    state = Tiny().state_dict()
    options = dict(layer_config={"lm_head": "int8"}, validate=False)
    quantized, _ = dynamic_quantize(state, "int4", **options)
    assert quantized["lm_head.weight"].dtype == torch.int8
    assert quantized["layers.0.mlp.weight"].dtype == torch.uint8  # int4 nibbles
    save_file({k: v.contiguous() for k, v in state.items()}, "src.safetensors")
    quantize_checkpoint("src.safetensors", "out.safetensors", "int4", **options)
    streamed, _ = load_quantized("out.safetensors")
    assert all(torch.equal(streamed[k], quantized[k]) for k in quantized)


def test_config_file_holds_layer_config_and_filter_fn(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text("def keep(name, module):\n    return 'mlp' not in name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mono_quant.toml").write_text(textwrap.dedent("""
        dtype = "int4"
        filter-fn = "my_rules:keep"

        [layer_config]
        lm_head = "int8"
        "*.attention.*" = { group-size = 32 }
    """))
    q, info = dynamic_quantize(Tiny())
    assert isinstance(q.lm_head, QuantizedLinear)
    assert q.layers[0].attention[0].group_size == 32
    assert info.skipped["layers.0.mlp"] == "filter_fn returned False"
    assert info.config.layer_config == {"lm_head": {"dtype": "int8"}, "*.attention.*": {"group_size": 32}}


@pytest.mark.parametrize("options, message", [
    (dict(layer_config={"x": {"min_params": 3}}), "a layer can override dtype, symmetric"),
    (dict(layer_config={"x": {"group_size": 100}}), r"layer_config\['x'\]: group_size must be one of"),
    (dict(layer_config={"x": "fp16"}), "cannot be combined with dtype 'fp16'"),
    (dict(dtype="fp16", layer_config={"x": "int8"}), "cannot be combined with dtype 'fp16'"),
    (dict(layer_config=["x"]), "layer_config must map layer names"),
    (dict(filter_fn="no_colon"), "filter_fn must be a function"),
    (dict(filter_fn="not_a_module_xyz:f"), "could not be imported"),
])
def test_bad_per_layer_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        QuantizationConfig(**options)


def test_layer_config_is_refused_by_static_quantization():
    with pytest.raises(ValueError, match="layer_config .* is for dynamic_quantize"):
        static_quantize(Tiny(), torch.randn(4, 128), layer_config={"lm_head": "int4"})


def test_patterns_that_match_no_layer_are_warnings():
    options = dict(modules_to_not_convert=["lm_hed"], skip_names=["*.atention.*"], layer_config={"head": "int8"})
    with pytest.warns(UserWarning, match="matches no layer") as caught:
        _, info = dynamic_quantize(Tiny(), "int4", **options)
    expected = ["modules_to_not_convert entry 'lm_hed'", "skip_names entry '*.atention.*'", "layer_config entry 'head'"]
    for fragment in expected:
        assert any(w.startswith(fragment) and "layer names look like 'layers.0'" in w for w in info.warnings)
    assert len(caught) == 3
    # the same in state_dict mode and for checkpoints
    with pytest.warns(UserWarning, match="matches no layer"):
        _, info = dynamic_quantize(Tiny().state_dict(), "int4", validate=False, **options)
    assert sum("matches no layer" in w for w in info.warnings) == 3
    save_file(Tiny().state_dict(), "src.safetensors")
    with pytest.warns(UserWarning, match="matches no layer"):
        info = quantize_checkpoint("src.safetensors", "out.safetensors", "int4", **options)
    assert sum("matches no layer" in w for w in info.warnings) == 3


def test_patterns_that_match_give_no_warning(recwarn):
    _, info = dynamic_quantize(Tiny(), modules_to_not_convert=["lm_head"], skip_names=["layers.1"],
                               layer_config={"attention": "int8"})
    assert not [w for w in info.warnings if "matches no layer" in w]
    assert not [w for w in recwarn if "matches no layer" in str(w.message)]
