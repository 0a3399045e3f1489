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
