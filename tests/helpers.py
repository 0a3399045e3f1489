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


def poke_packed(layer: nn.Module, name: str, index: tuple[int, ...], value: int | float) -> None:
    """Write ``value`` as the canonical ``layer.<name>[index]`` straight into the bytes of a
    packed Linear layer's ``packed`` buffer, bypassing every check (``set_weight`` refuses bad
    values): how tests make a layer that a file, a loader or a stray write could corrupt.
    ``name`` is "scale" or "zero_point"; ``index`` is (row,) for INT8 and (row, group) for INT4."""
    import struct

    from mono_quant import _reference as ref

    row = index[0]
    tile, r = divmod(row, ref.LINEAR_NR)
    header = 64
    if getattr(layer, "group_size", None):  # INT4: per group, fp16 scale[16], uint8 zero[16], pad
        g, k = layer.group_size, layer.in_features
        group_bytes = 64 + g // ref.LINEAR_QK * 256
        base = header + tile * (k // g) * group_bytes + index[1] * group_bytes
        offset, raw = ((base + 2 * r, struct.pack("<e", value)) if name == "scale"
                       else (base + 32 + r, bytes([int(value)])))
    else:  # INT8: per tile, the weights, then float32 scale[16] and int32 zero[16] (zero_point - center)
        kp = -(-layer.in_features // ref.LINEAR_QK) * ref.LINEAR_QK
        tile_bytes = kp * ref.LINEAR_NR + 128
        base = header + tile * tile_bytes + kp * ref.LINEAR_NR
        center = 0 if layer.symmetric else 128
        offset, raw = ((base + 4 * r, struct.pack("<f", value)) if name == "scale"
                       else (base + 64 + 4 * r, struct.pack("<i", int(value) - center)))
    with torch.no_grad():
        layer.packed[offset:offset + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
