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


# ---- "the model is left as it was": everything a caller could notice ------------------------------

def _tensor_record(tensor: torch.Tensor | None):
    """The tensor object itself (identity), a clone of its bits, every property a caller sees,
    and the same record of its ``.grad``."""
    if tensor is None:
        return None
    try:
        version = tensor._version
    except RuntimeError:  # inference-mode tensors have no version counter
        version = None
    props = (tensor.dtype, tensor.device, tuple(tensor.shape), tensor.stride(), tensor.storage_offset(),
             tensor.requires_grad, version)
    value = None if tensor.is_meta else tensor.detach().clone()
    return tensor, value, props, _tensor_record(tensor.grad if tensor.is_leaf else None)


def _hook_dicts(owner: object) -> dict[str, list[tuple[object, object]]]:
    """Every hook table of a module (``_forward_pre_hooks``, ``_state_dict_hooks``, ...) as
    (handle id, hook object) lists."""
    attrs = vars(owner)
    return {name: list(value.items()) for name, value in attrs.items()
            if "hooks" in name and isinstance(value, dict)}


def _global_hooks() -> dict[str, list[tuple[object, object]]]:
    import torch.nn.modules.module as module_module

    return {name: list(value.items()) for name, value in vars(module_module).items()
            if name.startswith("_global_") and isinstance(value, dict)}


def snapshot(model: nn.Module | dict[str, torch.Tensor]) -> dict:
    """Everything a caller could notice changing in ``model`` (a module or a state_dict): each
    module (identity, type, training flag, hooks, plain attributes), each parameter and buffer
    (identity, bits, dtype, device, shape, strides, requires_grad, grad, version counter: any
    in-place write bumps it, even one that puts the same values back), torch's global hooks.

    >>> before = snapshot(model); validate(model, qmodel); assert_same_snapshot(before, snapshot(model))
    """
    if not isinstance(model, nn.Module):
        return {"state": {key: _tensor_record(t) for key, t in model.items()}, "keys": list(model),
                "global hooks": _global_hooks()}
    modules = {}
    for name, module in model.named_modules(remove_duplicate=False):
        plain = {k: v for k, v in vars(module).items()
                 if k not in ("_parameters", "_buffers", "_modules") and not ("hooks" in k and isinstance(v, dict))}
        modules[name] = {
            "object": module,
            "type": type(module),
            "training": module.training,
            "hooks": _hook_dicts(module),
            "attributes": {k: (v, id(v)) for k, v in plain.items()},
            "parameters": {k: _tensor_record(p) for k, p in module._parameters.items()},
            "buffers": {k: _tensor_record(b) for k, b in module._buffers.items()},
            "persistent": set(module._buffers) - set(module._non_persistent_buffers_set),
            "children": {k: id(m) for k, m in module._modules.items()},
        }
    return {"modules": modules, "global hooks": _global_hooks()}


def _compare_tensor(where: str, before, after) -> list[str]:
    if before is None or after is None:
        return [] if before is after else [f"{where}: became {'None' if after is None else 'a tensor'}"]
    problems = []
    if after[0] is not before[0]:
        problems.append(f"{where}: replaced by another tensor object")
    if after[2] != before[2]:
        names = ("dtype", "device", "shape", "stride", "storage offset", "requires_grad", "version")
        changed = [f"{n} {b} -> {a}" for n, b, a in zip(names, before[2], after[2]) if a != b]
        problems.append(f"{where}: {', '.join(changed)}")
    if before[1] is not None and after[1] is not None and not bits_equal(before[1], after[1]):
        problems.append(f"{where}: values changed")
    return problems + _compare_tensor(f"{where}.grad", before[3], after[3])


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN equals the same NaN; -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    if a.is_floating_point() or a.is_complex():
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}[a.element_size()]
        a, b = a.view(bits), b.view(bits)
    return torch.equal(a, b)


def snapshot_differences(before: dict, after: dict) -> list[str]:
    """What changed between two ``snapshot``s of the same model, one line per difference."""
    problems = []
    if after["global hooks"] != before["global hooks"]:
        problems.append("torch's global module hooks changed")
    if "state" in before:
        if after["keys"] != before["keys"]:
            problems.append(f"state_dict keys {before['keys']} -> {after['keys']}")
        for key in before["state"].keys() & after["state"].keys():
            problems += _compare_tensor(key, before["state"][key], after["state"][key])
        return problems
    if list(after["modules"]) != list(before["modules"]):
        return problems + [f"module tree {list(before['modules'])} -> {list(after['modules'])}"]
    for name, b in before["modules"].items():
        a, where = after["modules"][name], name or "(root)"
        for field in ("type", "training", "hooks", "persistent", "children"):
            if a[field] != b[field]:
                problems.append(f"{where}: {field} {b[field]!r} -> {a[field]!r}")
        if a["object"] is not b["object"]:
            problems.append(f"{where}: replaced by another module object")
        if a["attributes"].keys() != b["attributes"].keys():
            problems.append(f"{where}: attributes {sorted(b['attributes'])} -> {sorted(a['attributes'])}")
        problems += [f"{where}.{k}: attribute rebound" for k in b["attributes"].keys() & a["attributes"].keys()
                     if a["attributes"][k][1] != b["attributes"][k][1]]
        for kind in ("parameters", "buffers"):
            if a[kind].keys() != b[kind].keys():
                problems.append(f"{where}: {kind} {sorted(b[kind])} -> {sorted(a[kind])}")
            for k in b[kind].keys() & a[kind].keys():
                problems += _compare_tensor(f"{where}.{k}", b[kind][k], a[kind][k])
    return problems


def assert_same_snapshot(before: dict, after: dict) -> None:
    """Fails with every difference listed when ``after`` is not ``before`` (see ``snapshot``)."""
    problems = snapshot_differences(before, after)
    assert not problems, "the model changed:\n  " + "\n  ".join(problems)


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
