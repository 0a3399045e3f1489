"""Which layers are converted and the reasons given for the ones that are not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import QuantizationConfig, dynamic_quantize
from mono_quant.nn import QuantizedConv2d, QuantizedLinear
from mono_quant.schemes import Int8Scheme
from mono_quant.selection import DEFAULT_FLOAT_TYPES, module_skip_reason, name_matches, type_matches

from helpers import assert_same_snapshot, snapshot


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(32, 32)
        self.proj = nn.Linear(32, 32)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.encoder = nn.ModuleList([Block(), Block()])
        self.conv = nn.Conv2d(4, 32, 3)
        self.lm_head = nn.Linear(32, 50)


def converted(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))}


ALL = {"encoder.0.attn", "encoder.0.proj", "encoder.1.attn", "encoder.1.proj", "conv", "lm_head"}


@pytest.mark.parametrize(
    "name, pattern, expected",
    [
        ("lm_head", "lm_head", True),
        ("model.decoder.lm_head", "lm_head", True),  # ends with "." + entry
        ("model.decoder.lm_head", "decoder.lm_head", True),
        ("my_lm_head", "lm_head", False),  # not a whole name part
        ("encoder.layer.0.q", "encoder", True),  # lies under it
        ("encoder.layer.0.q", "layer.0", True),
        ("encoder.layer.10.q", "layer.1", False),
        ("encoder.layer.3.attn", "*.attn", True),  # fnmatch pattern
        ("encoder.layer.3.attn", "encoder.layer.[0-2].*", False),
        ("encoder.layer.1.attn", "encoder.layer.[0-2].*", True),
        ("head", "Head", False),  # case-sensitive, like module names
    ],
)
def test_name_matches(name, pattern, expected):
    assert name_matches(name, pattern) is expected


def test_type_matches():
    class MyLinear(nn.Linear):
        pass

    assert type_matches(nn.Linear, nn.Linear) and type_matches(MyLinear, nn.Linear)
    for spec in ("Linear", "nn.Linear", "torch.nn.Linear", "torch.nn.modules.linear.Linear"):
        assert type_matches(nn.Linear, spec), spec
    assert type_matches(MyLinear, "MyLinear") and not type_matches(nn.Linear, "MyLinear")
    assert not type_matches(nn.Conv2d, "Linear")


def test_everything_supported_is_converted_by_default():
    qmodel, info = dynamic_quantize(Net(), min_params=0)
    assert converted(qmodel) == ALL
    assert set(info.quantized) == ALL
    assert info.skipped.keys() == {"embed"}


@pytest.mark.parametrize("float_type", DEFAULT_FLOAT_TYPES)
def test_default_float_types_stay_float(float_type):
    layer = {
        nn.Embedding: lambda: nn.Embedding(100, 16),
        nn.EmbeddingBag: lambda: nn.EmbeddingBag(100, 16),
        nn.GroupNorm: lambda: nn.GroupNorm(4, 1024),
    }.get(float_type, lambda: float_type(1024))()
    model = nn.Sequential(layer, nn.Linear(32, 32))
    qmodel, info = dynamic_quantize(model, min_params=0)
    assert type(qmodel[0]) is float_type
    hint = "; pass quantize_embeddings=True to make embeddings INT8" if float_type in (nn.Embedding, nn.EmbeddingBag) else ""
    assert info.skipped["0"] == (
        f"{float_type.__name__} stays float (embeddings and norms are not quantized by default{hint})"
    )
    assert isinstance(qmodel[1], QuantizedLinear)


def test_unsupported_types_and_subclasses_are_skipped_with_reasons():
    model = nn.Sequential(nn.Conv1d(32, 32, 3), nn.Linear(32, 32))
    _, info = dynamic_quantize(model, min_params=0)
    assert info.skipped["0"] == "Conv1d is not supported by the int8 scheme (supported: Linear, Conv2d)"
    # MultiheadAttention reads out_proj.weight itself: its Linear subclass must stay as it is.
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    qmha, info = dynamic_quantize(mha, min_params=0)
    assert info.skipped["out_proj"].startswith("NonDynamicallyQuantizableLinear subclasses Linear")
    assert info.skipped[""] == "MultiheadAttention is not supported by the int8 scheme (supported: Linear, Conv2d)"
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(qmha(x, x, x)[0], mha(x, x, x)[0])


def test_min_params():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 64))  # 72 and 576 parameters
    qmodel, info = dynamic_quantize(model)
    assert info.skipped == {"0": "has 72 parameters, fewer than min_params=512"}
    assert isinstance(qmodel[1], QuantizedLinear)
    assert not dynamic_quantize(model, min_params=72)[1].skipped


@pytest.mark.parametrize(
    "entries, kept",
    [
        (["lm_head"], {"lm_head"}),
        (["encoder.0"], {"encoder.0.attn", "encoder.0.proj"}),  # everything under it
        (["attn"], {"encoder.0.attn", "encoder.1.attn"}),  # every name ending in .attn
        (["encoder.*.proj"], {"encoder.0.proj", "encoder.1.proj"}),
    ],
)
def test_modules_to_not_convert(entries, kept):
    qmodel, info = dynamic_quantize(Net(), min_params=0, modules_to_not_convert=entries)
    assert converted(qmodel) == ALL - kept
    for name in kept:
        assert info.skipped[name].startswith("listed in modules_to_not_convert")


def test_layer_types_and_skip_types():
    qmodel, info = dynamic_quantize(Net(), min_params=0, layer_types=[nn.Conv2d])
    assert converted(qmodel) == {"conv"}
    assert info.skipped["lm_head"] == "type Linear is not in layer_types (Conv2d)"
    qmodel, info = dynamic_quantize(Net(), min_params=0, skip_types=["Conv2d"])
    assert converted(qmodel) == ALL - {"conv"}
    assert info.skipped["conv"] == "type Conv2d matches skip_types (Conv2d)"
    # Asking for a type the scheme cannot convert skips it with that reason, no error.
    _, info = dynamic_quantize(Net(), min_params=0, layer_types=["Embedding"])
    assert info.skipped["embed"] == "Embedding is not supported by the int8 scheme (supported: Linear, Conv2d)"


def test_layer_names_and_skip_names():
    qmodel, info = dynamic_quantize(Net(), min_params=0, layer_names=["encoder.1"])
    assert converted(qmodel) == {"encoder.1.attn", "encoder.1.proj"}
    assert info.skipped["conv"] == "name matches none of layer_names ('encoder.1')"
    qmodel, info = dynamic_quantize(Net(), min_params=0, skip_names=["*.proj", "conv"])
    assert converted(qmodel) == ALL - {"encoder.0.proj", "encoder.1.proj", "conv"}
    assert info.skipped["conv"] == "name matches skip_names ('conv')"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_skipped_not_errors(bad):
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight[3, 4] = bad
    before = snapshot(model)
    qmodel, info = dynamic_quantize(model, min_params=0)
    assert info.skipped["0"].startswith("'weight' contains NaN or Inf; replace them (torch.nan_to_num)")
    assert type(qmodel[0]) is nn.Linear and isinstance(qmodel[1], QuantizedLinear)
    assert_same_snapshot(before, snapshot(model))


def test_tied_weights_stay_float():
    model = Net()
    model.lm_head.weight = model.embed.weight  # tied, as in many language models
    qmodel, info = dynamic_quantize(model, min_params=0)
    assert info.skipped["lm_head"] == (
        "its weight is shared with 'embed' (tied); converting it would untie them, so both stay float"
    )
    assert qmodel.lm_head.weight is qmodel.embed.weight


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_module_skip_reason_directly():
    scheme = Int8Scheme(QuantizationConfig(min_params=0))
    assert module_skip_reason("fc", nn.Linear(4, 4), scheme) is None
    assert module_skip_reason("fc", nn.Linear(0, 4), scheme) == "'weight' is empty (shape (4, 0))"


def test_state_dict_rules_follow_the_same_options():
    sd = Net().state_dict()
    qsd, info = dynamic_quantize(sd, min_params=0)
    assert qsd["lm_head.weight"].dtype == torch.int8 and qsd["conv.weight"].dtype == torch.int8
    assert info.skipped["embed"].startswith("its name says it is an embedding")
    assert info.layers["conv"].module_type == "Conv2d-like"
    qsd, info = dynamic_quantize(sd, min_params=0, layer_types=["Embedding"])
    assert qsd["embed.weight"].dtype == torch.int8 and info.quantized == ["embed"]
    qsd, info = dynamic_quantize(sd, min_params=0, modules_to_not_convert=["encoder"], skip_types=[nn.Conv2d])
    assert info.quantized == ["lm_head"]
    assert info.skipped["conv"] == "a Conv2d-like weight, which matches skip_types (Conv2d)"
    small = {"fc.weight": torch.randn(8, 8), "fc.bias": torch.randn(8)}
    assert dynamic_quantize(small)[1].skipped == {"fc": "has 72 parameters, fewer than min_params=512"}


def test_state_dict_non_finite_and_requantized_entries():
    sd = {"fc.weight": torch.randn(32, 32), "fc.bias": torch.randn(32)}
    sd["fc.weight"][0, 0] = float("nan")
    qsd, info = dynamic_quantize(sd, min_params=0)
    assert info.skipped["fc"].startswith("'weight' contains NaN or Inf")
    assert qsd["fc.weight"].dtype == torch.float32
    clean = {"fc.weight": torch.randn(32, 32)}
    once, _ = dynamic_quantize(clean, min_params=0)
    twice, info = dynamic_quantize(once, min_params=0)
    assert info.skipped["fc"] == "already quantized (has weight_scale / weight_zero_point)"
    assert all(torch.equal(once[k], twice[k]) for k in once)


def test_meta_weights_are_an_error_not_a_silently_unquantized_model():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(32, 32))
    with pytest.raises(ValueError, match=r"on the meta device \('0.weight', '0.bias'\).*Load the weights first"):
        dynamic_quantize(model, min_params=0)
    with pytest.raises(ValueError, match="on the meta device"):
        dynamic_quantize(model.state_dict(), min_params=0)
