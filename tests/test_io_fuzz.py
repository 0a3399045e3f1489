"""Bounded, seeded fuzzing of every file reader: mutated ``.safetensors`` and ``.pt`` files
(truncations, byte flips, forged header fields and objects) either load bit for bit as saved
or raise CorruptFileError; quantize_checkpoint's reader either raises CorruptFileError or
writes exactly what dynamic_quantize gives for the tensors the mutated source holds. Any other
exception, or a load that differs, is a failure listed with the seed and case that made it.

A few hundred cases in all, each seeded by its test's name, so a run repeats exactly; about
ten seconds on one core."""

from __future__ import annotations

import json
import random
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, quantize_checkpoint, save_quantized
from mono_quant.io import read_quantized

from io_helpers import split_header

CASES = {"truncate": 60, "flip": 150, "forge": 120}  # per format: 330 loads
READER_CASES = {"truncate": 30, "flip": 60, "forge": 40}  # per source format: 130 quantize_checkpoint runs


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 8), nn.LayerNorm(8), nn.Linear(8, 4, bias=False))


def skeleton() -> nn.Module:
    with torch.device("meta"):
        return factory()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    def raw(t):  # a fresh standard-strided copy: views of odd strides cannot be reinterpreted
        return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


# ---------------------------------------------------------------------------------------------
# Mutations.
# ---------------------------------------------------------------------------------------------

def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"cut at {cut} of {len(data)}"


def flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    # Mostly one low bit, which keeps header text ASCII (so the JSON parser, not the UTF-8
    # decoder, meets it), sometimes any byte value.
    flips = [(rng.randrange(len(out)), 1 << rng.randrange(7) if rng.random() < 0.7 else rng.randrange(1, 256))
             for _ in range(rng.randint(1, 4))]
    for position, mask in flips:
        out[position] ^= mask
    return bytes(out), f"xor {flips}"


def hostile_value(rng: random.Random, depth: int = 0):
    """A JSON value of the kinds forged headers use: huge and negative integers, shapes that
    overflow, floats, strings, nesting."""
    pick = rng.randrange(12 if depth < 2 else 8)
    return [
        lambda: rng.choice([0, 1, -1, 2**31 - 1, 2**32, 2**63, 2**64, -(2**63)]),
        lambda: rng.randrange(-1000, 10**6),
        lambda: rng.choice([0.5, -0.0, 1e300, 3.0]),
        lambda: rng.choice(["", "F32", "I8", "U8", "F16", "BF16", "Q4", "\u00e9", "x" * 300]),
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: [rng.choice([0, 1, 2, 4, 8, 16, 2**62, 2**64]) for _ in range(rng.randint(0, 4))],
        lambda: "@BIG@",  # written as a 5000-digit integer
        lambda: [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
        lambda: {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]},
        lambda: {str(rng.randrange(9)): hostile_value(rng, depth + 1)},
        lambda: [0, rng.choice([2**62, 2**64, 10**12])],
    ][pick]()


def _join_raw(text: str, body: bytes) -> bytes:
    raw = text.encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


def forge_safetensors(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One forged header field: an entry's dtype / shape / offsets, a new or replaced entry, a
    metadata value (plain or inside a layer record), or the header length itself."""
    header, body = split_header(data)
    names = sorted(k for k in header if k != "__metadata__")
    how = rng.randrange(6)
    if how == 0:
        name, field = rng.choice(names), rng.choice(["dtype", "shape", "data_offsets"])
        value = hostile_value(rng)
        header[name][field] = value
        what = f"{name}.{field} = {value!r:.80}"
    elif how == 1:
        name, value = rng.choice(names + ["new"]), hostile_value(rng)
        header[name] = value
        what = f"entry {name} = {value!r:.80}"
    elif how == 2 and "__metadata__" in header:
        meta = header["__metadata__"]
        key = rng.choice(sorted(meta) + ["new"])
        value = rng.choice([hostile_value(rng), json.dumps(hostile_value(rng)), "", "{}"])
        meta[key] = value
        what = f"metadata {key} = {value!r:.80}"
    elif how == 3 and "__metadata__" in header and any(k.startswith("layer:") for k in header["__metadata__"]):
        meta = header["__metadata__"]
        key = rng.choice(sorted(k for k in meta if k.startswith("layer:")))
        record = json.loads(meta[key])
        field = rng.choice(sorted(record) + ["new"])
        record[field] = hostile_value(rng)
        meta[key] = json.dumps(record).replace('"@BIG@"', "9" * 5000)
        what = f"{key}.{field} = {record[field]!r:.80}"
    elif how == 4:
        length = rng.choice([0, 1, 7, 2**32, 2**63, 2**64 - 1, len(data), rng.randrange(len(data) * 2)])
        return length.to_bytes(8, "little") + data[8:], f"header length = {length}"
    else:
        name = rng.choice(names)
        shape = [0, rng.choice([2**62, 2**63, 2**64])] + rng.choice([[], [2**62]])
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        header[f"{name}.extra"] = {"dtype": rng.choice(["F32", "I8", "BOOL"]), "shape": shape, "data_offsets": [end, end]}
        what = f"empty entry of shape {shape}"
    return _join_raw(json.dumps(header).replace('"@BIG@"', "9" * 5000), body), what


def forge_pt(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One forged part of the pickled object: a tensor swapped for another dtype, shape,
    a view or a non-tensor, a metadata value, an extra key."""
    Path("forge.pt").write_bytes(data)
    obj = torch.load("forge.pt", weights_only=True)
    tensors, meta = obj["tensors"], obj["metadata"]
    name = rng.choice(sorted(tensors))
    how = rng.randrange(6)
    if how == 0:
        dtype = rng.choice([torch.float16, torch.int32, torch.uint8, torch.float64, torch.bool])
        tensors[name] = tensors[name].to(dtype)
        what = f"{name} as {dtype}"
    elif how == 1:
        tensors[name] = tensors[name].reshape(-1)[: rng.randrange(tensors[name].numel() + 1)]
        what = f"{name} cut to a prefix"
    elif how == 2:
        base = torch.zeros(tensors[name].numel() * 2, dtype=tensors[name].dtype)
        tensors[name] = base[::2].reshape(tensors[name].shape)  # a strided view of a larger storage
        what = f"{name} as a strided view of zeros"
    elif how == 3:
        key = rng.choice(sorted(meta) + ["new"])
        meta[key] = rng.choice([json.dumps(hostile_value(rng)), "", "{", "9" * 400])
        what = f"metadata {key} = {meta[key]!r:.80}"
    elif how == 4:
        tensors[name] = rng.choice([[1, 2], "x", 3.5, {"a": torch.zeros(1)}])
        what = f"{name} = a {type(tensors[name]).__name__}"
    else:
        obj[rng.choice(["extra", "tensors"])] = rng.choice([{}, [], torch.zeros(2)])
        what = "top-level key replaced or added"
    torch.save(obj, "forge.pt")
    return Path("forge.pt").read_bytes(), what


def forge_state_pt(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One forged entry of a pickled float state_dict (quantize_checkpoint's ``.pt`` source)."""
    Path("forge.pt").write_bytes(data)
    state = torch.load("forge.pt", weights_only=True)
    name = rng.choice(sorted(state))
    value = rng.choice([
        lambda t: t.to(rng.choice([torch.float16, torch.bfloat16, torch.int8, torch.bool, torch.complex64])),
        lambda t: t.reshape(-1)[::2],
        lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t,
        lambda t: t.reshape(1, -1) if t.dim() else t,
        lambda t: [1, 2],
        lambda t: {"nested": t},
    ])(state[name])
    state[name] = value
    if rng.random() < 0.2:
        state[rng.choice([7, name + ".weight_scale", ""])] = torch.ones(2)
    torch.save(state, "forge.pt")
    return Path("forge.pt").read_bytes(), f"{name} forged"


MUTATIONS = {"truncate": truncate, "flip": flip}


# ---------------------------------------------------------------------------------------------
# load_quantized on both formats.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The valid files, their tensors as saved and the saved model's output on a fixed input."""
    folder = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    qmodel, info = dynamic_quantize(factory(), "int8", min_params=0, validate=False)
    x = torch.randn(3, 32)
    with torch.no_grad():  # as the loaded model runs (the fast path rounds activations)
        out = {"x": x, "y": qmodel(x)}
    for suffix in (".safetensors", ".pt"):
        path = save_quantized(qmodel, folder / f"model{suffix}", info)
        out[suffix] = (path.read_bytes(), read_quantized(path)[0])
    return out


def load_or_corrupt(path: Path, want: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None when the file raised CorruptFileError or loads bit for bit as saved, else what went wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about some damaged zips before it raises
            tensors, _ = load_quantized(path)
            model = load_quantized(path, skeleton())
    except CorruptFileError as exc:
        return None if str(exc).startswith(f"{path}: ") else f"message without the file name: {exc}"
    except Exception as exc:  # noqa: BLE001 (any other exception is the finding)
        return f"{type(exc).__name__}: {exc}"[:300]
    if tensors.keys() != want.keys() or not all(same_bits(tensors[k], want[k]) for k in want):
        return "loaded tensors differ from the saved ones"
    with torch.no_grad():
        got = model(x)
    return None if same_bits(got, y) else "the loaded model computes a different output"


@pytest.mark.parametrize("kind", ["truncate", "flip", "forge"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_fuzz_load_quantized(saved, suffix, kind):
    data, want = saved[suffix]
    rng = random.Random(zlib.crc32(f"load{suffix}{kind}".encode()))
    mutate = MUTATIONS.get(kind) or (forge_safetensors if suffix == ".safetensors" else forge_pt)
    failures = []
    for case in range(CASES[kind]):
        mutated, what = mutate(rng, data)
        path = Path("fuzz" + suffix)
        path.write_bytes(mutated)
        problem = load_or_corrupt(path, want, saved["x"], saved["y"])
        if problem:
            failures.append(f"case {case} ({what}): {problem}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# quantize_checkpoint's reader.
# ---------------------------------------------------------------------------------------------

def float_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"fc1.weight": torch.randn(16, 32, generator=gen), "fc1.bias": torch.randn(16, generator=gen),
            "norm.weight": torch.randn(16, generator=gen), "fc2.weight": torch.randn(8, 16, generator=gen),
            "step": torch.tensor(3)}


def reference_read(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of the mutated source as an independent reader sees them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".pt":
                state = torch.load(path, weights_only=True)
                return state if isinstance(state, dict) else None
            return load_file(path)
    except Exception:  # noqa: BLE001
        return None


def quantize_or_corrupt(path: Path) -> str | None:
    options = {"dtype": "int8", "min_params": 0}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_checkpoint(path, "out.safetensors", **options)
    except CorruptFileError as exc:
        return None if str(exc).startswith(f"{path}: ") else f"message without the file name: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"[:300]
    state = reference_read(path)
    if state is None:
        return "quantize_checkpoint read a file that the reference reader refuses"
    expected, _ = dynamic_quantize(state, validate=False, **options)
    got, _ = read_quantized("out.safetensors")
    if got.keys() != expected.keys() or not all(same_bits(got[k], expected[k]) for k in expected):
        return "the output differs from dynamic_quantize of what the source holds"
    return None


@pytest.mark.parametrize("kind", ["truncate", "flip", "forge"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_fuzz_quantize_checkpoint_reader(suffix, kind):
    if suffix == ".safetensors":
        save_file(float_state(), "valid.safetensors")
    else:
        torch.save(float_state(), "valid.pt")
    data = Path("valid" + suffix).read_bytes()
    rng = random.Random(zlib.crc32(f"reader{suffix}{kind}".encode()))
    mutate = MUTATIONS.get(kind) or (forge_safetensors if suffix == ".safetensors" else forge_state_pt)
    failures = []
    for case in range(READER_CASES[kind]):
        mutated, what = mutate(rng, data)
        path = Path("source" + suffix)
        path.write_bytes(mutated)
        problem = quantize_or_corrupt(path)
        if problem:
            failures.append(f"case {case} ({what}): {problem}")
        Path("out.safetensors").unlink(missing_ok=True)
    assert not failures, "\n".join(failures)
