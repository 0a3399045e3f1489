"""load_quantized into a meta skeleton: its non-persistent buffers come from buffers_from, or
from the model's own _init_weights, or the load is refused naming the buffer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import dynamic_quantize, load_quantized, save_quantized
from mono_quant.nn import QuantizedLinear


class Embeddings(nn.Module):
    def __init__(self, positions: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)), persistent=False)

    def forward(self, x):
        return self.fc(x) + self.position_ids[:, : x.shape[-2], None].float() * self.inv_freq.sum()


class WithInit(nn.Module):
    """Like a transformers model: a config and an _init_weights that fills the buffers."""

    def __init__(self, fill: bool = True) -> None:
        super().__init__()
        self.config = {"positions": 16}
        self.embeddings = Embeddings()
        self.fill = fill

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Embeddings):
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            if self.fill:
                module.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)))

    def forward(self, x):
        return self.embeddings(x)


def saved(model: nn.Module, path) -> tuple[nn.Module, torch.Tensor]:
    qmodel, info = dynamic_quantize(model)
    save_quantized(qmodel, path, info)
    x = torch.randn(1, 5, 64)
    return qmodel, qmodel(x)


def meta(cls, *args):
    with torch.device("meta"):
        return cls(*args)


def test_buffers_from_a_cpu_model_or_a_dict(tmp_path):
    path = tmp_path / "m.safetensors"
    qmodel, _ = saved(Embeddings(), path)
    loaded = load_quantized(path, meta(Embeddings), buffers_from=Embeddings())
    assert isinstance(loaded.fc, QuantizedLinear)
    assert torch.equal(loaded.position_ids, qmodel.position_ids) and torch.equal(loaded.inv_freq, qmodel.inv_freq)
    assert "position_ids" not in loaded.state_dict()  # still non-persistent
    given = {"position_ids": torch.arange(16).expand((1, -1)), "inv_freq": qmodel.inv_freq.clone()}
    loaded = load_quantized(path, meta(Embeddings), buffers_from=given)
    x = torch.randn(1, 5, 64)
    assert torch.equal(loaded(x), qmodel(x))


def test_model_initialisation_fills_the_buffers(tmp_path):
    path = tmp_path / "m.safetensors"
    qmodel, _ = saved(WithInit(), path)
    loaded = load_quantized(path, meta(WithInit))
    assert torch.equal(loaded.embeddings.position_ids, qmodel.embeddings.position_ids)
    assert torch.equal(loaded.embeddings.inv_freq, qmodel.embeddings.inv_freq)
    x = torch.randn(1, 5, 64)
    assert torch.equal(loaded(x), qmodel(x))


def test_a_buffer_the_initialisation_does_not_set_is_refused_and_the_skeleton_is_unchanged(tmp_path):
    path = tmp_path / "m.safetensors"
    saved(WithInit(), path)
    skeleton = meta(WithInit, False)
    with pytest.raises(ValueError, match="'embeddings.inv_freq' is on the meta device and the model's _init_weights "
                                         "does not set it; pass buffers_from="):
        load_quantized(path, skeleton)
    assert skeleton.embeddings.position_ids.is_meta and type(skeleton.embeddings.fc) is nn.Linear


def test_without_a_source_the_error_names_the_buffer_and_the_ways_out(tmp_path):
    path = tmp_path / "m.safetensors"
    saved(Embeddings(), path)
    with pytest.raises(ValueError, match=r"'position_ids' is on the meta device .* pass buffers_from= a model of the "
                                         "same architecture built on the CPU"):
        load_quantized(path, meta(Embeddings))


@pytest.mark.parametrize("given, message", [
    ({}, "buffers_from has no tensor 'position_ids'"),
    ({"position_ids": torch.zeros(1, 8, dtype=torch.long)}, r"is torch.int64 \[1, 8\] but the skeleton's is"),
    ("nope", "buffers_from must be a model"),
])
def test_bad_buffers_from(tmp_path, given, message):
    path = tmp_path / "m.safetensors"
    saved(Embeddings(), path)
    with pytest.raises((ValueError, TypeError), match=message):
        load_quantized(path, meta(Embeddings), buffers_from=given)
    with pytest.raises(ValueError, match="on the meta device too"):
        load_quantized(path, meta(Embeddings), buffers_from=meta(Embeddings))
