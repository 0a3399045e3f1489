"""The fp16 scheme: the whole model cast to float16, module types unchanged, per-layer records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import dynamic_quantize

from helpers import assert_same_snapshot, cosine, make_cnn, snapshot


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
        "1 layer(s) keep their float dtype inside a float16 model (fc); their inputs arrive as "
        "float16, so cast them in forward or convert these layers too"
    ]


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
