"""Models, checkpoints and file surgery shared by the save/load, streaming, validation and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mono_quant import _safetensors as st


class TiedLM(nn.Module):
    """Embedding tied to the output head, a norm, two Linears and a non-parameter buffer."""

    def __init__(self, vocab: int = 50, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 64)
        self.fc2 = nn.Linear(64, dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("position", torch.arange(8, dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(ids))
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


class SharedBlock(nn.Module):
    """One Linear reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(32, 32)
        self.second = self.first
        self.out = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.second(torch.relu(self.first(x))))


def checkpoint_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small transformer-like float state_dict: embeddings, norms, Linears, a conv, a scalar."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    state = {"model.embed_tokens.weight": rand(64, 32)}
    for i in range(2):
        p = f"model.layers.{i}"
        state |= {
            f"{p}.norm.weight": rand(32), f"{p}.norm.bias": rand(32),
            f"{p}.attn.q_proj.weight": rand(32, 32), f"{p}.attn.q_proj.bias": rand(32),
            f"{p}.mlp.up.weight": rand(128, 32), f"{p}.mlp.down.weight": rand(32, 128),
        }
    state["model.conv.weight"] = rand(16, 8, 3, 3)
    state["model.conv.bias"] = rand(16)
    state["model.scale"] = torch.tensor(0.5)
    state["lm_head.weight"] = rand(64, 32)
    return state


def split_header(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, data section) of safetensors bytes."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_header(header: dict, body: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + body


def edit_header(path: Path, edit) -> None:
    """Apply ``edit(header)`` (in place) to the JSON header of a safetensors file."""
    header, body = split_header(path.read_bytes())
    edit(header)
    path.write_bytes(join_header(header, body))


def edit_metadata(path: Path, edit) -> None:
    """Apply ``edit(metadata)`` to the string metadata of a safetensors file."""
    edit_header(path, lambda header: edit(header["__metadata__"]))


def drop_tensor(path: Path, name: str) -> None:
    """Remove tensor ``name`` (header and bytes) but keep the metadata as it was."""
    with open(path, "rb") as handle:
        header = st.read_header(handle, path)
        tensors = {n: st.read_tensor(handle, e, path) for n, e in header.tensors.items() if n != name}
    with st.StreamingWriter(path) as writer:
        for n, t in tensors.items():
            writer.write(n, t)
        writer.finish(header.metadata)


def int4_quantize_linears(model: nn.Module, group_size: int = 32, symmetric: bool = True) -> nn.Module:
    """Replace every nn.Linear whose in_features fits ``group_size`` by QuantizedLinearInt4 (in place)."""
    from mono_quant.nn.qlinear_int4 import QuantizedLinearInt4

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and QuantizedLinearInt4.supports(child, group_size) is None:
                parent._modules[name] = QuantizedLinearInt4.from_float(child, group_size, symmetric)
    return model


def rewrite_tensors(path: Path, edit) -> None:
    """Apply ``edit(tensors)`` (in place, names as stored) to a mono_quant file of either format
    and recompute the CRC-32 checksums, so that only the value checks can tell."""
    from mono_quant._safetensors import tensor_crc32

    path = Path(path)
    if path.suffix == ".pt":
        obj = torch.load(path, weights_only=True)
        tensors, metadata = obj["tensors"], obj["metadata"]
    else:
        with open(path, "rb") as handle:
            header = st.read_header(handle, path)
            tensors = {n: st.read_tensor(handle, e, path) for n, e in header.tensors.items()}
        metadata = dict(header.metadata)
    with torch.no_grad():
        edit(tensors)
    metadata["checksums"] = json.dumps({n: tensor_crc32(t.contiguous()) for n, t in tensors.items()})
    if path.suffix == ".pt":
        torch.save({"tensors": tensors, "metadata": metadata}, path)
        return
    with st.StreamingWriter(path) as writer:
        for n, t in tensors.items():
            writer.write(n, t)
        writer.finish(metadata)
