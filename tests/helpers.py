"""Small models and comparisons the tests share."""

from __future__ import annotations

import torch
from torch import nn


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 32))


def make_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


class SharedLog(list):
    """A list that deep copies of the module holding it share (they append to this one):
    ``calibrate`` and ``validate`` run copies of the models passed in."""

    def __deepcopy__(self, memo):
        return self


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, type]], bool]:
    """Everything a caller could notice changing: tensors, module types, training flag."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    types = [(name, type(m)) for name, m in model.named_modules()]
    return state, types, model.training


def assert_same_snapshot(before, after) -> None:
    state_b, types_b, training_b = before
    state_a, types_a, training_a = after
    assert types_a == types_b
    assert training_a == training_b
    assert state_a.keys() == state_b.keys()
    for key in state_b:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, equal_nan=True, msg=key)


def assert_activation_rounding_close(y: torch.Tensor, x: torch.Tensor, w_hat: torch.Tensor,
                                     bias: torch.Tensor | None) -> None:
    """``y`` (a quantized Linear's CPU output) equals float math on the dequantized weight up
    to the int8 rounding of the activations: each activation in a block of 32 moves by at most
    half its block's step d_b, so |y - x.w_hat| <= sum_b d_b / 2 * sum_{k in b} |w_hat[n, k]|,
    plus float rounding of y itself (its dtype's epsilon, relative to sum |x| |w_hat|)."""
    from mono_quant import _reference as R

    k = w_hat.shape[1]
    x2 = x.detach().reshape(-1, k)
    _, d, _ = R.quantize_linear_activations(x2)
    kp = d.shape[1] * R.LINEAR_QK
    wabs = nn.functional.pad(w_hat.abs().double(), (0, kp - k)).view(w_hat.shape[0], -1, R.LINEAR_QK).sum(-1)
    exact = x2.double() @ w_hat.double().T + (0 if bias is None else bias.double())
    eps = torch.finfo(y.dtype).eps
    scale = x2.double().abs() @ w_hat.double().abs().T + (0 if bias is None else bias.double().abs())
    bound = 0.5 * (1 + 1e-5) * d.double() @ wabs.T + 4 * eps * scale + 1e-30
    err = (y.detach().reshape(exact.shape).double() - exact).abs()
    assert bool((err <= bound).all()), f"worst excess over the rounding bound {(err - bound).max().item():.3g}"
