"""The fp16 scheme: the whole model cast to float16, module types unchanged, per-layer records."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

from mono_quant import dynamic_quantize, load_quantized, save_quantized

from helpers import assert_same_snapshot, cosine, make_cnn, make_mlp, snapshot


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 64)
        self.head = nn.Linear(64, 100)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.norm(self.embed(ids)))))


def floating_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}


def test_whole_model_is_cast_and_stays_accurate(backend):
    model = TinyLM()
    before = snapshot(model)
    half, info = dynamic_quantize(model, "fp16")
    assert [type(m) for m in half.modules()] == [type(m) for m in model.modules()]
    assert floating_dtypes(half) == {torch.float16}
    assert set(info.quantized) == {"embed", "norm", "fc", "head"} and not info.skipped  # min_params does not apply
    ids = torch.randint(0, 100, (4, 7))
    assert cosine(half(ids).float(), model(ids)) > 0.999
    assert_same_snapshot(before, snapshot(model))


def test_records_sizes_and_sqnr(backend):
    _, info = dynamic_quantize(TinyLM(), torch.float16)
    fc = info.layers["fc"]
    assert (fc.scheme, fc.dtype, fc.shape, fc.module_type) == ("fp16", "float16", (64, 32), "Linear")
    assert fc.bytes_before == (32 * 64 + 64) * 4 and fc.bytes_after == fc.bytes_before // 2
    assert info.compression_ratio == pytest.approx(2.0)
    assert 60 < fc.sqnr_db < 90  # float16 keeps about 11 significant bits
    assert info.layers["norm"].sqnr_db == float("inf")  # ones and zeros are exact in float16


def test_buffers_parameters_and_training_flags():
    model = make_cnn().train()
    model(torch.randn(2, 3, 8, 8))  # give BatchNorm real running statistics
    half, _ = dynamic_quantize(model, "fp16")
    bn = half[1]
    assert bn.running_mean.dtype == torch.float16 and bn.num_batches_tracked.dtype == torch.int64
    assert isinstance(bn.weight, nn.Parameter) and bn.weight.requires_grad
    assert half.training and half[1].training


def test_tied_parameters_stay_tied():
    model = TinyLM()
    model.head = nn.Linear(32, 100)
    model.head.weight = model.embed.weight
    half, _ = dynamic_quantize(model, "fp16")
    assert half.head.weight is half.embed.weight and half.head.weight.dtype == torch.float16


def test_values_beyond_float16_range_keep_their_dtype_with_a_warning():
    model = TinyLM()
    with torch.no_grad():
        model.fc.weight[0, 0] = 1e6
    half, info = dynamic_quantize(model, "fp16")
    assert half.fc.weight.dtype == torch.float32 and half.head.weight.dtype == torch.float16
    assert info.skipped["fc"].startswith("'weight' has values beyond the float16 range")
    assert info.warnings == [
        "1 layer(s) keep their float dtype inside a float16 model (fc); they run in that dtype "
        "(their inputs and outputs are cast) and keep its size"
    ]
    ids = torch.randint(0, 100, (2, 5))
    assert bool(torch.isfinite(model(ids)).all())
    # fc's outputs (~1e6) do not fit the float16 head after it: inf, as in model.half(), but said
    with pytest.warns(RuntimeWarning, match=r"the output of Linear 'fc' has values beyond float16's range "
                                            r"\(\|x\| > 65504\) that became inf"):
        y = half(ids)
    assert y.dtype == torch.float32 and not bool(torch.isfinite(y).all())


def test_user_rules_still_apply():
    half, info = dynamic_quantize(TinyLM(), "fp16", modules_to_not_convert=["head"], skip_types=["LayerNorm"])
    assert half.head.weight.dtype == torch.float32 and half.norm.weight.dtype == torch.float32
    assert half.fc.weight.dtype == torch.float16
    assert set(info.skipped) == {"head", "norm"} and "norm, head" in info.warnings[0]


def test_state_dict_mode_casts_every_floating_tensor():
    model = make_cnn()
    sd = model.state_dict()
    half, info = dynamic_quantize(sd, "fp16")
    assert list(half) == list(sd)
    assert all(half[k].dtype == (torch.float16 if sd[k].is_floating_point() else sd[k].dtype) for k in sd)
    assert info.quantized == ["0", "1", "3", "6"] and info.compression_ratio == pytest.approx(2.0, rel=1e-3)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})


# ---- the dtypes callers see: the original's (as torch's dynamic float16 quantization) -------


class HeadOnEmbedding(nn.Module):
    """Uses another module's weight directly in its own forward (a tied output head)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(self.embed(ids))) @ self.embed.weight.T


def test_takes_and_returns_the_original_dtypes_and_computes_in_float16():
    model = make_mlp().eval()
    half, _ = dynamic_quantize(model, "fp16")
    plain = copy.deepcopy(model).half()  # what the layers compute: model.half()
    x = torch.randn(5, 64)
    with torch.no_grad():
        for given in (x, x.half(), x.bfloat16()):
            y = half(given)
            assert y.dtype == torch.float32  # the original's output dtype, whatever came in
            assert torch.equal(y, plain(given.half()).float())
        assert cosine(half(x), model(x)) > 0.999
    lm = HeadOnEmbedding()
    ids = torch.randint(0, 50, (3, 4))
    half_lm, _ = dynamic_quantize(lm, "fp16")
    assert half_lm(ids).dtype == torch.float32 and cosine(half_lm(ids), lm(ids)) > 0.999


def test_a_bfloat16_original_keeps_bfloat16_inputs_and_outputs():
    model = make_mlp().to(torch.bfloat16)
    half, _ = dynamic_quantize(model, "fp16")
    assert floating_dtypes(half) == {torch.float16}
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert half(x).dtype == torch.bfloat16 and cosine(half(x), model(x)) > 0.99


def nan_layer(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    return model


def big_layer(model: nn.Module) -> nn.Module:
    """Layer 3 holds a weight beyond float16's range (it stays float32); the norm before it
    makes that weight's input small, so its outputs fit float16."""
    with torch.no_grad():
        model[2].weight[0] = 1e-3
        model[3].weight[0, 0] = 7e4
    return model


@pytest.mark.parametrize("case", ["nan", "beyond-range", "user-rule", "first-and-last"])
def test_layers_left_in_float_work_with_either_input(case):
    model = {"nan": lambda: nan_layer(make_mlp()), "beyond-range": lambda: big_layer(make_mlp())}.get(case, make_mlp)()
    rules = {"user-rule": {"modules_to_not_convert": ["2"]}, "first-and-last": {"skip_names": ["0", "3"]}}
    half, info = dynamic_quantize(model.eval(), "fp16", **rules.get(case, {}))
    assert info.skipped and info.quantized
    assert {half[i].weight.dtype for i in (0, 2, 3)} == {torch.float16, torch.float32}
    x = torch.randn(4, 64)
    with torch.no_grad():
        y32, y16 = half(x), half(x.half())
        assert y32.dtype == y16.dtype == torch.float32
        if case != "nan":
            assert cosine(y32, model(x)) > 0.999 and cosine(y16, model(x)) > 0.999
        else:  # the NaN weight gives NaN in its output row, as in the original
            assert torch.equal(torch.isnan(y32), torch.isnan(model(x)))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_loaded_fp16_model_behaves_as_the_one_saved(tmp_path, suffix):
    model = big_layer(make_mlp()).eval()
    half, info = dynamic_quantize(model, "fp16")
    path = save_quantized(half, tmp_path / f"half{suffix}", info)
    with torch.device("meta"):
        skeleton = make_mlp().eval()
    loaded = load_quantized(path, skeleton)
    assert loaded[3].weight.dtype == torch.float32 and loaded[0].weight.dtype == torch.float16
    x = torch.randn(3, 64)
    with torch.no_grad():
        for given in (x, x.half()):
            assert torch.equal(loaded(given), half(given))
    again = load_quantized(path, loaded)  # loading twice does not stack the casts
    assert len(again._forward_pre_hooks) == 1 and len(again._forward_hooks) == 1
    without_info = save_quantized(half, tmp_path / f"bare{suffix}")  # the file still says fp16
    assert torch.equal(load_quantized(without_info, make_mlp().eval())(x), half(x))


def test_copies_and_pickles_keep_the_interface():
    half, _ = dynamic_quantize(nan_layer(make_mlp()), "fp16")
    x = torch.randn(2, 64)
    for other in (copy.deepcopy(half), pickle.loads(pickle.dumps(half))):
        assert torch.equal(torch.nan_to_num(other(x)), torch.nan_to_num(half(x)))
        assert other(x).dtype == torch.float32


def test_gradients_flow_through_the_casts():
    half, _ = dynamic_quantize(make_mlp().train(), "fp16")
    x = torch.randn(2, 64, requires_grad=True)
    half(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and half[0].weight.grad.dtype == torch.float16


def test_inputs_beyond_float16_range_warn():
    half, _ = dynamic_quantize(make_mlp(), "fp16")
    x = torch.randn(2, 64)
    x[0, 0] = 1e5
    with pytest.warns(RuntimeWarning, match=r"the input of the model \(Sequential\) has values beyond float16's"):
        half(x)
    x[0, 0] = float("inf")  # already inf: nothing new to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        half(x)
