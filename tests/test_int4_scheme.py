"""dynamic_quantize(..., dtype="int4"): modules, fallbacks, skip rules, sizes, state_dict mode, report."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import QuantizationConfig, dequantize_state_dict, dynamic_quantize
from mono_quant import _kernels as K
from mono_quant.nn import QuantizedConv2d, QuantizedLinear, QuantizedLinearInt4
from mono_quant.schemes import Int4Scheme, Int8Scheme, get_scheme
from mono_quant.schemes.int4 import divisibility_reason

from helpers import assert_same_snapshot, cosine, snapshot

GROUP_SIZES = (32, 64, 128, 256)


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.LayerNorm(512), nn.Linear(512, 64))


def gaussian(model: nn.Module) -> nn.Module:
    """Plain N(0, 1) weights: int4 g128 gives about 19.8 dB on them (design.md)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_()
    return model


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 128)
        self.encoder = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(128, 128), "proj": nn.Linear(128, 128)})
                                      for _ in range(2)])
        self.norm = nn.LayerNorm(128)
        self.conv = nn.Conv2d(4, 32, 3)
        self.lm_head = nn.Linear(128, 50)


INT4_LAYERS = {"encoder.0.attn", "encoder.0.proj", "encoder.1.attn", "encoder.1.proj", "lm_head"}


def int4_layers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, QuantizedLinearInt4)}


# ---- modules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_mlp_every_group_size(backend, group_size):
    model = make_mlp().eval()
    qmodel, info = dynamic_quantize(model, "int4", group_size=group_size)
    for index, (k, n) in ((0, (256, 512)), (3, (512, 64))):
        layer = qmodel[index]
        # the defaults: asymmetric (a zero point per group), mse scales
        assert type(layer) is QuantizedLinearInt4 and (layer.group_size, layer.symmetric) == (group_size, False)
        assert layer.qweight.shape == (n, k // 2) and layer.scale.shape == (n, k // group_size)
        expected = K.int4_quantize(model[index].weight, group_size, False, "mse")
        assert all(torch.equal(a, b) for a, b in zip((layer.qweight, layer.scale, layer.zero_point), expected))
        record = info.layers[str(index)]
        assert (record.scheme, record.dtype, record.shape) == (f"int4 g{group_size} asymmetric mse", "int4", (n, k))
        assert record.details == {"group_size": group_size, "symmetric": False, "scale_method": "mse",
                                  "weight_dtype": "float32", "bias": True, "bits_per_weight": 4 + 24 / group_size}
        assert record.bytes_after == layer.storage_bytes()
        assert record.sqnr_db == K.sqnr(model[index].weight, layer.dequantized_weight())
    assert type(qmodel[2]) is nn.LayerNorm and info.skipped.keys() == {"2"}
    x = torch.randn(8, 256)
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.98


def test_asymmetric(backend):
    model = gaussian(make_mlp()).eval()
    with torch.no_grad():
        model[0].weight.add_(0.5)  # off-centre weights: where zero points pay off
    sym_model, sym = dynamic_quantize(model, "int4", group_size=64, symmetric=True)
    qmodel, info = dynamic_quantize(model, "int4", group_size=64, symmetric=False)
    default, _ = dynamic_quantize(model, "int4", group_size=64)
    assert default[0].symmetric is False and torch.equal(default[0].qweight, qmodel[0].qweight)
    assert sym_model[0].symmetric and bool((sym_model[0].zero_point == 8).all())
    layer = qmodel[0]
    assert layer.symmetric is False and not bool((layer.zero_point == 8).all())
    assert int(layer.zero_point.max()) <= 15
    assert torch.equal(layer.qweight, K.int4_quantize(model[0].weight, 64, False, "mse")[0])
    assert info.layers["0"].scheme == "int4 g64 asymmetric mse" and info.layers["0"].details["symmetric"] is False
    assert info.layers["0"].sqnr_db > sym.layers["0"].sqnr_db
    x = torch.randn(8, 256)
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.98


@pytest.mark.parametrize("scale_method", ["absmax", "mse"])
def test_scale_method_reaches_the_kernel(scale_method):
    model = gaussian(make_mlp())
    qmodel, info = dynamic_quantize(model, "int4", scale_method=scale_method)
    assert torch.equal(qmodel[0].scale, K.int4_quantize(model[0].weight, 128, False, scale_method)[1])
    assert info.layers["0"].details["scale_method"] == scale_method
    assert info.layers["0"].scheme == f"int4 g128 asymmetric {scale_method}"


def test_mse_beats_absmax_and_is_the_default():
    model = gaussian(make_mlp())
    _, default = dynamic_quantize(model, "int4", symmetric=True)
    _, absmax = dynamic_quantize(model, "int4", symmetric=True, scale_method="absmax")
    for name in ("0", "3"):
        assert default.layers[name].details["scale_method"] == "mse"
        assert default.layers[name].sqnr_db > absmax.layers[name].sqnr_db + 0.8  # ~ +1.2 dB at g128


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scale_method": "minmax"}, "scale_method must be one of 'absmax', 'mse'; got 'minmax'"),
        ({"scale_method": "MSE"}, "scale_method must be one of 'absmax', 'mse'; got 'MSE'"),
        ({"group_size": 100}, "group_size must be one of 32, 64, 128, 256; got 100"),
        ({"group_size": 16}, "group_size must be one of 32, 64, 128, 256; got 16"),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dynamic_quantize(make_mlp(), "int4", **options)


def test_config_choices_agree_with_the_kernels():
    from mono_quant import config

    assert config.SCALE_METHODS == K.INT4_SCALE_METHODS and config.GROUP_SIZES == K.INT4_GROUP_SIZES
    assert QuantizationConfig().scale_method == K.INT4_DEFAULT_SCALE_METHOD == "mse"


@pytest.mark.parametrize("alias", ["int4", "INT4", "quint4x2", torch.quint4x2])
def test_dtype_aliases(alias):
    qmodel, info = dynamic_quantize(make_mlp(), alias)
    assert type(qmodel[0]) is QuantizedLinearInt4 and info.config.dtype == "int4"


def test_options_from_a_config_dict_and_the_root_module():
    qlinear, info = dynamic_quantize(nn.Linear(256, 64), config={"dtype": "int4", "group_size": 64})
    assert type(qlinear) is QuantizedLinearInt4 and qlinear.group_size == 64 and list(info.layers) == [""]


def test_exports_and_registry():
    assert mono_quant.QuantizedLinearInt4 is QuantizedLinearInt4
    assert "QuantizedLinearInt4" in mono_quant.__all__ and "QuantizedLinearInt4" in mono_quant.nn.__all__
    for module in (mono_quant, mono_quant.nn):
        assert all(hasattr(module, name) for name in module.__all__)
    assert get_scheme("int4") is Int4Scheme and Int4Scheme.supported_types == (nn.Linear, nn.Conv2d)


# ---- fallbacks -----------------------------------------------------------------------------------


def test_non_divisible_in_features_fall_back_to_int8_per_channel(backend):
    model = nn.Sequential(nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 96), nn.Linear(96, 64))
    qmodel, info = dynamic_quantize(model, "int4", per_channel=False)  # per_channel is for int8 only
    assert [type(qmodel[i]) for i in (0, 2, 3)] == [QuantizedLinearInt4, QuantizedLinear, QuantizedLinear]
    for index, k in ((2, 100), (3, 96)):
        layer, record = qmodel[index], info.layers[str(index)]
        assert layer.per_channel and layer.qweight.dtype == torch.int8
        int8_q = Int8Scheme(QuantizationConfig(min_params=0)).convert_module("", model[index])[0]
        assert torch.equal(layer.qweight, int8_q.qweight) and torch.equal(layer.scale, int8_q.scale)
        assert record.quantized and record.dtype == "int8"
        assert record.scheme == "int8 per-channel symmetric (int4 fallback)"
        assert record.details["fallback"] == QuantizedLinearInt4.supports(model[index], 128)
        assert "group_size" not in record.details and record.sqnr_db > 30
    assert info.layers["2"].details["fallback"] == (
        "in_features (100) is not a multiple of group_size (128); "
        "no INT4 group size divides it; quantize this layer as INT8 per channel"
    )
    assert info.layers["3"].details["fallback"].endswith(
        "use group_size=32 (divides 96) or quantize this layer as INT8"
    )
    assert info.fallbacks == {"2": info.layers["2"].details["fallback"], "3": info.layers["3"].details["fallback"]}
    assert not info.skipped
    assert info.warnings == [  # two of three: the run stores far more than INT4's ~4.19 bits per weight
        f"group_size=128 does not divide the in_features of 2 of 3 Linear layers (96, 100 wide): they were "
        f"stored as INT8, so the model stores {info.bits_per_weight:.2f} bits per weight instead of about 4.19; "
        "use group_size=32 (divides the in_features of 2 of 3)"
    ]
    text = str(info)
    assert "int8 per-channel symmetric (int4 fallback)" in text
    assert "Fallbacks (2):\n  - 2: in_features (100) is not a multiple of group_size (128)" in text


def test_fallback_keeps_the_symmetry_and_follows_the_group_size():
    model = nn.Sequential(nn.Linear(96, 64))
    qmodel, info = dynamic_quantize(model, "int4", symmetric=False)
    assert type(qmodel[0]) is QuantizedLinear and qmodel[0].qweight.dtype == torch.uint8
    assert info.layers["0"].scheme == "uint8 per-channel asymmetric (int4 fallback)"
    qmodel, info = dynamic_quantize(model, "int4", group_size=32)
    assert type(qmodel[0]) is QuantizedLinearInt4 and not info.fallbacks


def test_conv2d_falls_back_to_int8_per_channel(backend):
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    qmodel, info = dynamic_quantize(model, "int4")
    assert type(qmodel[0]) is QuantizedConv2d and qmodel[0].per_channel
    assert type(qmodel[3]) is QuantizedLinearInt4
    record = info.layers["0"]
    assert record.scheme == "int8 per-channel symmetric (int4 fallback)"
    assert record.details["fallback"] == "INT4 stores Linear weights only; Conv2d weights are kept as INT8 per channel"
    assert "  - 0: INT4 stores Linear weights only" in str(info)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert cosine(model(x), qmodel(x)) > 0.98


def test_divisibility_reason_is_the_module_text():
    for k, g in ((100, 128), (96, 128), (192, 128), (256, 128), (64, 256)):
        assert divisibility_reason(k, g) == QuantizedLinearInt4.supports(nn.Linear(k, 4), g)


# ---- skip rules ----------------------------------------------------------------------------------


def test_default_rules_under_int4():
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0)
    assert int4_layers(qmodel) == INT4_LAYERS and type(qmodel.conv) is QuantizedConv2d
    assert info.skipped == {
        "embed": "Embedding stays float (embeddings and norms are not quantized by default; pass "
                 "quantize_embeddings=True to make embeddings INT8)",
        "norm": "LayerNorm stays float (embeddings and norms are not quantized by default)",
    }
    assert type(qmodel.embed) is nn.Embedding and type(qmodel.norm) is nn.LayerNorm


def test_min_params_under_int4():
    model = nn.Sequential(nn.Linear(32, 4), nn.Linear(128, 8))  # 132 and 1032 parameters
    qmodel, info = dynamic_quantize(model, "int4")
    assert info.skipped == {"0": "has 132 parameters, fewer than min_params=512"}
    assert type(qmodel[0]) is nn.Linear and type(qmodel[1]) is QuantizedLinearInt4
    _, info = dynamic_quantize(model, "int4", min_params=2000)
    assert info.skipped["1"] == "has 1032 parameters, fewer than min_params=2000"


@pytest.mark.parametrize(
    "entries, kept",
    [
        (["lm_head"], {"lm_head"}),
        (["encoder.0"], {"encoder.0.attn", "encoder.0.proj"}),
        (["attn"], {"encoder.0.attn", "encoder.1.attn"}),
        (["encoder.*.proj"], {"encoder.0.proj", "encoder.1.proj"}),
    ],
)
def test_modules_to_not_convert_under_int4(entries, kept):
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, modules_to_not_convert=entries)
    assert int4_layers(qmodel) == INT4_LAYERS - kept
    for name in kept:
        assert info.skipped[name] == f"listed in modules_to_not_convert ({entries[0]!r})"
        assert type(qmodel.get_submodule(name)) is nn.Linear


def test_layer_types_and_skip_types_under_int4():
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, layer_types=["Linear"])
    assert int4_layers(qmodel) == INT4_LAYERS and type(qmodel.conv) is nn.Conv2d
    assert info.skipped["conv"] == "type Conv2d is not in layer_types (Linear)"
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, skip_types=[nn.Conv2d])
    assert int4_layers(qmodel) == INT4_LAYERS and info.skipped["conv"] == "type Conv2d matches skip_types (Conv2d)"
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, skip_types=["Linear"])
    assert not int4_layers(qmodel) and type(qmodel.conv) is QuantizedConv2d
    _, info = dynamic_quantize(Net(), "int4", min_params=0, layer_types=["Embedding"])
    assert info.skipped["embed"] == "Embedding is not supported by the int4 scheme (supported: Linear, Conv2d)"


def test_layer_names_and_skip_names_under_int4():
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, layer_names=["encoder.1"])
    assert int4_layers(qmodel) == {"encoder.1.attn", "encoder.1.proj"}
    assert info.skipped["lm_head"] == "name matches none of layer_names ('encoder.1')"
    qmodel, info = dynamic_quantize(Net(), "int4", min_params=0, skip_names=["*.proj", "conv"])
    assert int4_layers(qmodel) == INT4_LAYERS - {"encoder.0.proj", "encoder.1.proj"}
    assert info.skipped["conv"] == "name matches skip_names ('conv')" and type(qmodel.conv) is nn.Conv2d


def test_subclasses_tied_and_non_finite_weights_under_int4():
    class MyLinear(nn.Linear):
        pass

    model = Net()
    model.lm_head.weight = model.embed.weight  # tied, as in many language models
    model.encoder[0]["attn"] = MyLinear(128, 128)
    with torch.no_grad():
        model.encoder[1]["proj"].weight[0, 0] = float("nan")
    qmodel, info = dynamic_quantize(model, "int4", min_params=0)
    assert int4_layers(qmodel) == {"encoder.0.proj", "encoder.1.attn"}
    assert info.skipped["encoder.0.attn"].startswith("MyLinear subclasses Linear and may change its behaviour")
    assert info.skipped["encoder.1.proj"].startswith("'weight' contains NaN or Inf")
    assert info.skipped["lm_head"].startswith("its weight is shared with 'embed' (tied)")


# ---- sizes, the original model -------------------------------------------------------------------


def test_linear_weights_shrink_to_about_a_seventh():
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512, bias=False))
    qmodel, info = dynamic_quantize(model, "int4", group_size=128)
    fc1, fc2 = info.layers["0"], info.layers["2"]
    # qweight 512*256 B + fp16 scales 512*4*2 B + uint8 zero points 512*4 B (+ fp32 bias 512*4 B)
    assert fc2.bytes_after == 512 * 256 + 512 * 4 * 2 + 512 * 4
    assert fc1.bytes_after == fc2.bytes_after + 512 * 4 == qmodel[0].storage_bytes()
    assert fc1.bytes_before == (512 * 512 + 512) * 4 and fc2.bytes_before == 512 * 512 * 4
    ratio = info.total_bytes_after / info.total_bytes_before
    assert ratio < 0.16 and fc2.bytes_before / fc2.bytes_after == pytest.approx(7.64, abs=0.01)
    for g in GROUP_SIZES:  # smaller groups cost more scales
        _, info_g = dynamic_quantize(model, "int4", group_size=g)
        assert info_g.layers["2"].bytes_after == 512 * 256 + 512 * (512 // g) * 3


def test_original_model_is_untouched_and_flags_are_kept():
    model = Net().train()
    model.norm.eval()
    before = snapshot(model)
    qmodel, _ = dynamic_quantize(model, "int4", min_params=0)
    assert qmodel is not model
    assert_same_snapshot(before, snapshot(model))
    assert not any(p is q for p in model.parameters() for q in qmodel.parameters())
    assert qmodel.training and qmodel.lm_head.training and not qmodel.norm.training


# ---- state_dict mode -----------------------------------------------------------------------------


def test_state_dict_round_trip(backend):
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 100), nn.Linear(100, 32, bias=False))
    sd = model.state_dict()
    original = {k: v.clone() for k, v in sd.items()}
    qsd, info = dynamic_quantize(sd, "int4", group_size=64, min_params=0)
    assert list(qsd) == [
        "0.weight", "0.weight_scale", "0.weight_zero_point", "0.bias",
        "2.weight", "2.weight_scale", "2.weight_zero_point", "2.bias",
        "3.weight", "3.weight_scale", "3.weight_zero_point",
    ]
    shapes = {k: (v.dtype, tuple(v.shape)) for k, v in qsd.items() if not k.endswith("bias")}
    assert shapes == {
        "0.weight": (torch.uint8, (64, 128)), "0.weight_scale": (torch.float16, (64, 4)),
        "0.weight_zero_point": (torch.uint8, (64, 4)),
        "2.weight": (torch.uint8, (100, 32)), "2.weight_scale": (torch.float16, (100, 1)),
        "2.weight_zero_point": (torch.uint8, (100, 1)),
        # in_features 100: the int8 scheme's entries
        "3.weight": (torch.int8, (32, 100)), "3.weight_scale": (torch.float32, (32,)),
        "3.weight_zero_point": (torch.int32, (32,)),
    }
    assert all(torch.equal(sd[k], original[k]) for k in sd)  # the input is untouched
    qmodel, _ = dynamic_quantize(model, "int4", group_size=64, min_params=0)
    assert torch.equal(qsd["0.weight"], qmodel[0].qweight) and torch.equal(qsd["0.weight_scale"], qmodel[0].scale)
    assert info.layers["0"].module_type == "Linear-like" and info.layers["0"].details["group_size"] == 64
    assert info.layers["3"].details["fallback"] == divisibility_reason(100, 64)
    assert info.layers["0"].sqnr_db == K.sqnr(sd["0.weight"], qmodel[0].dequantized_weight())
    restored = dequantize_state_dict(qsd)
    assert list(restored) == list(sd)
    assert torch.equal(restored["0.weight"], qmodel[0].dequantized_weight())
    assert torch.equal(restored["2.weight"], qmodel[2].dequantized_weight())
    assert torch.equal(restored["3.weight"], qmodel[3].dequantized_weight())
    assert cosine(restored["0.weight"], sd["0.weight"]) > 0.98
    assert dequantize_state_dict(qsd, torch.float16)["0.weight"].dtype == torch.float16
    model.load_state_dict(restored)


def test_state_dict_formats_are_told_apart_by_their_tensors():
    int4 = {"weight": torch.full((8, 64), 0x88, dtype=torch.uint8),  # every nibble 8 = the zero point
            "weight_scale": torch.ones(8, 1, dtype=torch.float16),
            "weight_zero_point": torch.full((8, 1), 8, dtype=torch.uint8)}
    int8 = {"weight": torch.zeros(8, 128, dtype=torch.uint8), "weight_scale": torch.ones(8),
            "weight_zero_point": torch.full((8,), 128, dtype=torch.int32)}
    assert Int8Scheme.dequantize_state(int4, torch.float32) is None
    assert Int4Scheme.dequantize_state(int8, torch.float32) is None
    assert torch.equal(Int4Scheme.dequantize_state(int4, torch.float32)["weight"], torch.zeros(8, 128))
    odd = dict(int4, weight_scale=torch.ones(8, 3, dtype=torch.float16),
               weight_zero_point=torch.ones(8, 3, dtype=torch.uint8))
    assert Int4Scheme.dequantize_state(odd, torch.float32) is None  # 128 / 3 is no group size
    with pytest.raises(ValueError, match="layer 'fc' has a weight_scale in a format no registered scheme reads"):
        dequantize_state_dict({f"fc.{k}": v for k, v in odd.items()})


def test_state_dict_conv_and_skip_rules():
    sd = Net().state_dict()
    qsd, info = dynamic_quantize(sd, "int4", min_params=0, skip_names=["encoder.1"])
    assert info.quantized == ["encoder.0.attn", "encoder.0.proj", "conv", "lm_head"]
    assert qsd["lm_head.weight"].shape == (50, 64) and qsd["lm_head.weight_scale"].dtype == torch.float16
    assert qsd["conv.weight"].dtype == torch.int8 and qsd["conv.weight"].shape == (32, 4, 3, 3)
    assert info.layers["conv"].details["fallback"].startswith("INT4 stores 2-D (Linear-like) weights only")
    assert info.skipped["embed"].startswith("its name says it is an embedding")
    assert info.skipped["encoder.1.attn"] == "name matches skip_names ('encoder.1')"
    assert info.skipped["norm"].startswith("1-D weight")
    twice, info = dynamic_quantize(qsd, "int4", min_params=0)
    assert info.skipped["lm_head"] == "already quantized (has weight_scale / weight_zero_point)"


# ---- accuracy warnings ---------------------------------------------------------------------------


def test_warnings_name_a_smaller_group_and_int8():
    model = gaussian(nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 128), nn.Linear(128, 64)))
    _, info = dynamic_quantize(model, "int4", symmetric=True)
    assert all(10 <= info.layers[n].sqnr_db < 20 for n in "012")  # ~19.8 dB: "warning", honestly
    assert [w.split(":")[0] for w in info.warnings] == ["0", "1", "2"]  # one line per layer
    assert info.warnings[0] == (
        f"0: SQNR {info.layers['0'].sqnr_db:.1f} dB is warning (good is >= 30 dB); skip it with "
        "modules_to_not_convert=['0'], or use group_size=64 or symmetric=False, or use dtype='int8' instead of 'int4'"
    )
    assert not dynamic_quantize(model, "int4", group_size=64, symmetric=True)[1].warnings  # ~20.4 dB: fair


@pytest.mark.parametrize(
    "group_size, symmetric, hint",
    [
        (64, True, "use group_size=32 or symmetric=False"),  # ~17.9 dB
        (64, False, "use group_size=32"),  # ~19.2 dB
        (32, True, "use symmetric=False"),  # ~19.1 dB: no smaller group size to offer
        (32, False, None),  # ~20.7 dB: fair, no warning
    ],
)
def test_warning_hints_follow_the_options(group_size, symmetric, hint):
    model = nn.Sequential(nn.Linear(256, 128, bias=False))
    with torch.no_grad():  # heavy-tailed weights: INT4 struggles more with them
        model[0].weight.copy_(torch.distributions.Laplace(0.0, 1.0).sample((128, 256)))
    _, info = dynamic_quantize(model, "int4", group_size=group_size, symmetric=symmetric)
    if hint is None:
        assert info.layers["0"].sqnr_db >= 20 and not info.warnings
    else:
        assert info.warnings == [
            f"0: SQNR {info.layers['0'].sqnr_db:.1f} dB is warning (good is >= 30 dB); skip it with "
            f"modules_to_not_convert=['0'], or {hint}, or use dtype='int8' instead of 'int4'"
        ]


def test_no_warnings_for_fallbacks_or_good_layers():
    model = nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 100), nn.Linear(100, 64))  # default init
    _, info = dynamic_quantize(model, "int4", min_params=0)
    assert all(layer.sqnr_db >= 20 for layer in info.layers.values()) and not info.warnings
    assert info.fallbacks.keys() == {"2"}
    record = dataclasses.replace(info.layers["2"], name="x", sqnr_db=5.0)
    info.add(record)
    assert info.warnings == ["x: SQNR 5.0 dB is critical (good is >= 30 dB); skip it with modules_to_not_convert=['x']"]
