"""Untrusted files: truncated, corrupted and hand-crafted files raise CorruptFileError naming the
file and the problem; nothing is executed; fuzzing finds no other exception."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, save_quantized

from io_helpers import drop_tensor, edit_header, edit_metadata, join_header, split_header


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 4, bias=False))


def skeleton() -> nn.Module:
    with torch.device("meta"):
        return factory()


_CACHE: dict[str, bytes] = {}


def valid_bytes(suffix: str = ".safetensors", dtype: str = "int8", layout: str = "module") -> bytes:
    """A small valid file, built once per kind."""
    key = f"{suffix}-{dtype}-{layout}"
    if key not in _CACHE:
        torch.manual_seed(0)
        model = factory()
        source = model if layout == "module" else model.state_dict()
        qmodel, info = dynamic_quantize(source, dtype, min_params=0, validate=False)
        path = Path(f"base{suffix}")
        save_quantized(qmodel, path, info)
        _CACHE[key] = path.read_bytes()
        path.unlink()
    return _CACHE[key]


def write(name: str, data: bytes) -> Path:
    path = Path(name)
    path.write_bytes(data)
    return path


def assert_corrupt(path: Path, message: str) -> None:
    with pytest.raises(CorruptFileError, match=message) as caught:
        load_quantized(path, skeleton())
    assert str(caught.value).startswith(f"{path}: ")


# ---------------------------------------------------------------------------------------------
# The safetensors container.
# ---------------------------------------------------------------------------------------------

def _len(n: int) -> bytes:
    return n.to_bytes(8, "little")


CONTAINER_CASES = {
    "empty": (lambda d: b"", "0 bytes, too short for the 8-byte header length"),
    "five-bytes": (lambda d: d[:5], "too short for the 8-byte header length"),
    "cut-in-header": (lambda d: d[:40], "only 32 bytes follow it; the file is truncated"),
    "cut-in-data": (lambda d: d[:-3], "the file is truncated or the offsets are wrong"),
    "huge-length": (lambda d: _len(2**63) + d[8:], "header length is 9223372036854775808 bytes; a safetensors"),
    "zero-length": (lambda d: _len(0) + d[8:], "header length is 0 bytes"),
    "not-utf8": (lambda d: _len(4) + b"{\xff\xfe}", "the header is not UTF-8 text"),
    "not-json": (lambda d: _len(5) + b"{abc}", "the header is not valid JSON"),
    "json-list": (lambda d: _len(6) + b"[1, 2]", "the header is a JSON list, not an object"),
    "nan": (lambda d: _len(10) + b'{"a": NaN}', "contains NaN, which is not JSON"),
    "duplicate-key": (lambda d: _len(16) + b'{"a": 1, "a": 2}', "the header names 'a' twice"),
    "deep-nesting": (lambda d: _len(200_000) + b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    "trailing-bytes": (lambda d: d + b"\0" * 8, "has .* bytes but the tensors cover .*trailing bytes"),
}


@pytest.mark.parametrize("case", CONTAINER_CASES)
def test_broken_containers(case):
    mutate, message = CONTAINER_CASES[case]
    assert_corrupt(write("bad.safetensors", mutate(valid_bytes())), message)


def _entry(name):
    def edit(header, field, value):
        header[name][field] = value
    return edit


HEADER_CASES = {
    "unknown-dtype": (lambda h: h["0.qweight"].update(dtype="Q4"), "tensor '0.qweight' has unknown dtype 'Q4'"),
    "dtype-not-string": (lambda h: h["0.qweight"].update(dtype=7), "unknown dtype 7"),
    "extra-key": (lambda h: h["0.qweight"].update(extra=1), "must have exactly the keys"),
    "entry-not-object": (lambda h: h.update({"0.qweight": [1, 2]}), "must have exactly the keys"),
    "negative-dim": (lambda h: h["0.qweight"].update(shape=[-8, -16]), r"shape \[-8, -16\] must be a list of integers"),
    "bool-dim": (lambda h: h["0.qweight"].update(shape=[True, 16]), "must be a list of integers"),
    "float-offset": (lambda h: h["0.qweight"].update(data_offsets=[0.0, 128]), "data_offsets"),
    "reversed-offsets": (lambda h: h["0.qweight"].update(data_offsets=[128, 0]), r"must be \[begin, end\]"),
    "offset-beyond-end": (lambda h: h["0.qweight"].update(data_offsets=[0, 10**12], shape=[10**12]),
                          "ends at byte 1000000000000 of the data section"),
    "shape-vs-span": (lambda h: h["0.qweight"].update(shape=[8, 15]), "needs 120 bytes but data_offsets span 128"),
    "metadata-not-strings": (lambda h: h["__metadata__"].update(format=1), "must map strings to strings"),
}


def _overlap(header):
    a, b = header["0.qweight"], header["0.scale"]
    a["data_offsets"], b["data_offsets"] = b["data_offsets"], a["data_offsets"]
    a["shape"], b["shape"], a["dtype"], b["dtype"] = b["shape"], a["shape"], b["dtype"], a["dtype"]


def _shift(header):  # move one tensor 4 bytes later: a hole before it, an overlap after it
    entry = min((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
    entry["data_offsets"] = [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]


HEADER_CASES["hole"] = (_shift, "leaves a hole at bytes 0..4")


@pytest.mark.parametrize("case", HEADER_CASES)
def test_hand_crafted_headers(case):
    edit, message = HEADER_CASES[case]
    path = write("bad.safetensors", valid_bytes())
    edit_header(path, edit)
    assert_corrupt(path, message)


def test_swapped_entries_are_caught_by_the_checksums():
    path = write("bad.safetensors", valid_bytes())
    edit_header(path, _overlap)
    assert_corrupt(path, "fails its CRC-32 check|overlaps|is float32, expected int8")


def test_flipped_data_bytes_fail_the_checksum():
    data = bytearray(valid_bytes())
    data[-1] ^= 0x40
    assert_corrupt(write("bad.safetensors", bytes(data)), "fails its CRC-32 check; its bytes are corrupted")


# ---------------------------------------------------------------------------------------------
# Metadata that lies or is malformed.
# ---------------------------------------------------------------------------------------------

def _layer(name, **changes):
    def edit(meta):
        record = json.loads(meta[f"layer:{name}"])
        record.update(changes)
        meta[f"layer:{name}"] = json.dumps(record)
    return edit


METADATA_CASES = {
    "not-mono-quant": (lambda m: m.pop("format"), "not a mono_quant file"),
    "future-version": (lambda m: m.update(format_version="2"), "format_version '2' is not supported.*upgrade"),
    "bad-layout": (lambda m: m.update(layout="rows"), "layout 'rows' is not one of module, state_dict"),
    "no-checksums": (lambda m: m.pop("checksums"), "the metadata has no 'checksums' entry"),
    "checksums-not-json": (lambda m: m.update(checksums="{"), "'checksums' is not valid JSON"),
    "checksum-wrong-type": (lambda m: m.update(checksums='{"0.qweight": "abc"}'), "'checksums' must be a JSON object"),
    "checksum-lists-less": (lambda m: m.update(checksums=json.dumps({k: v for k, v in json.loads(m["checksums"]).items()
                                                                  if k != "0.bias"})),
                            "'0.bias' is in the file but not in the metadata's checksums"),
    "bad-alias": (lambda m: m.update(aliases='{"x.weight": "nowhere"}'), "alias 'x.weight' -> 'nowhere' is invalid"),
    "alias-over-stored": (lambda m: m.update(aliases='{"0.scale": "0.bias"}'), "alias '0.scale' -> '0.bias' is invalid"),
    "layer-not-json": (lambda m: m.update({"layer:0": "{kind"}), "the metadata of layer '0' is not valid JSON"),
    "layer-not-object": (lambda m: m.update({"layer:0": "[1]"}), "must be a JSON object with a 'kind' string"),
    "unknown-kind": (_layer("0", kind="int3_linear"), "layer '0': unknown layer kind 'int3_linear'"),
    "shape-lies": (_layer("0", original_shape=[8, 99]), r"tensor '0.qweight' has shape \[8, 16\], expected \[8, 99\]"),
    "shape-garbage": (_layer("0", original_shape="big"), "field 'original_shape' must be a shape"),
    "shape-wrong-rank": (_layer("0", original_shape=[8, 16, 1]), "must have 2 dimensions"),
    "symmetry-lies": (_layer("0", symmetric=False), "tensor '0.qweight' is int8, expected uint8"),
    "bias-lies": (_layer("0", bias=False), "unexpected tensor '0.bias'"),
    "missing-bias": (_layer("2", bias=True), "tensor '2.bias' is missing"),
    "missing-field": (lambda m: m.update({"layer:0": '{"kind": "int8_linear"}'}), "field 'original_shape' is missing"),
    "bool-as-int": (_layer("0", bias=1), "field 'bias' must be a bool"),
    "bad-sqnr": (_layer("0", sqnr_db="high"), "field 'sqnr_db' must be a number"),
    "bad-original-dtype": (_layer("0", original_dtype="int3"), "field 'original_dtype'"),
    "layer-for-a-norm": (lambda m: m.update({"layer:1": m["layer:0"]}), "tensor '1.qweight' is missing"),
}


@pytest.mark.parametrize("case", METADATA_CASES)
def test_lying_metadata(case):
    edit, message = METADATA_CASES[case]
    path = write("bad.safetensors", valid_bytes())
    edit_metadata(path, edit)
    assert_corrupt(path, message)


def test_missing_tensor():
    path = write("bad.safetensors", valid_bytes())
    drop_tensor(path, "0.scale")
    assert_corrupt(path, "tensor '0.scale' is listed in the metadata but missing from the file")


def test_cast_layers_must_hold_the_dtype_they_claim():
    path = write("bad.safetensors", valid_bytes(dtype="fp16"))
    edit_metadata(path, _layer("0", dtype="bfloat16"))
    assert_corrupt(path, "tensor '0.weight' is torch.float16, but the metadata says it was cast to torch.bfloat16")


def test_state_dict_files_need_a_record_for_each_quantized_layer():
    path = write("bad.safetensors", valid_bytes(layout="state_dict"))
    edit_metadata(path, lambda m: m.pop("layer:0"))
    assert_corrupt(path, "layer '0' holds quantized tensors but the metadata has no record of it")
    with pytest.raises(CorruptFileError, match="no record of it"):
        load_quantized(path)  # also without a model


# ---------------------------------------------------------------------------------------------
# .pt files: torch.load(weights_only=True) only, then the same checks.
# ---------------------------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _pt(obj) -> bytes:
    torch.save(obj, "tmp.pt")
    return Path("tmp.pt").read_bytes()


def _valid_pt_obj():
    return torch.load(write("v.pt", valid_bytes(".pt")), weights_only=True)


PT_CASES = {
    "truncated": (lambda: valid_bytes(".pt")[:-100], r"torch.load\(weights_only=True\) cannot read it"),
    "not-a-zip": (lambda: b"hello world" * 10, "cannot read it"),
    "code-execution": (lambda: _pt({"tensors": {}, "metadata": {}, "x": _Exploit()}), "cannot read it"),
    "plain-state-dict": (lambda: _pt({"w": torch.zeros(2)}), "exactly the keys 'tensors' and 'metadata'"),
    "parameter": (lambda: _pt({"tensors": {"w": nn.Parameter(torch.zeros(2))}, "metadata": {}}), "not a plain tensor"),
    "int-metadata": (lambda: _pt({"tensors": {}, "metadata": {"format": 1}}), "must map strings to strings"),
    "sparse": (lambda: _pt({"tensors": {"w": torch.eye(3).to_sparse()}, "metadata": {}}), "only dense CPU tensors"),
    "complex": (lambda: _pt({"tensors": {"w": torch.zeros(2, dtype=torch.complex64)}, "metadata": {}}),
                "only dense CPU tensors"),
    "no-metadata": (lambda: _pt({"tensors": {}, "metadata": {}}), "not a mono_quant file"),
    "lying-metadata": (lambda: _pt({**_valid_pt_obj(), "metadata": {**_valid_pt_obj()["metadata"],
                                                                       "layer:0": '{"kind": "int8_linear", "original_shape": [1, 1], "bias": true, "symmetric": true}'}}),
                       r"tensor '0.qweight' has shape \[8, 16\], expected \[1, 1\]"),
}


@pytest.mark.parametrize("case", PT_CASES)
def test_broken_pt_files(case):
    make, message = PT_CASES[case]
    assert_corrupt(write("bad.pt", make()), message)
    assert not Path("pwned").exists()


def test_pt_data_corruption_is_caught():
    qweight = _valid_pt_obj()["tensors"]["0.qweight"]
    raw = bytes(qweight.view(torch.uint8).flatten().tolist())
    data = bytearray(valid_bytes(".pt"))
    where = data.find(raw)
    assert where > 0
    data[where + 5] ^= 0x10
    assert_corrupt(write("bad.pt", bytes(data)), "CRC-32|cannot read it")


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, the loader raises ValueError or returns a working model.
# ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _load_or_value_error(path: Path) -> bool:
    """True when the load succeeded (and the model runs), False on a ValueError."""
    try:
        model = load_quantized(path, skeleton())
    except ValueError:
        return False
    with torch.no_grad():
        model(torch.zeros(1, 16))
    return True


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_byte_flips(flips):
    original = valid_bytes()
    data = bytearray(original)
    data_start = 8 + int.from_bytes(data[:8], "little")
    for position, mask in flips:
        data[position % len(data)] ^= mask
    loaded = _load_or_value_error(write("fuzz.safetensors", bytes(data)))
    # Flips of one byte can cancel out ((p, 1) twice): only the bytes that ended up different count.
    changed = [p for p in range(len(data)) if data[p] != original[p]]
    if changed and all(p >= data_start for p in changed):
        assert not loaded, "a flipped data byte must fail its CRC-32 check"


@FUZZ
@given(cut=st.integers(0, 10**9))
def test_fuzz_truncation(cut):
    data = valid_bytes()
    assert not _load_or_value_error(write("fuzz.safetensors", data[: cut % len(data)]))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(which=st.integers(0, 100), field=st.sampled_from(["dtype", "shape", "data_offsets"]), value=_JSON)
def test_fuzz_header_fields(which, field, value):
    header, body = split_header(valid_bytes())
    names = sorted(k for k in header if k != "__metadata__")
    entry = header[names[which % len(names)]]
    changed = entry[field] != value
    entry[field] = value
    loaded = _load_or_value_error(write("fuzz.safetensors", join_header(header, body)))
    assert not (loaded and changed), f"{field}={value!r} was accepted"


@FUZZ
@given(which=st.integers(0, 100), value=st.text(max_size=40) | _JSON.map(json.dumps))
def test_fuzz_metadata_values(which, value):
    header, body = split_header(valid_bytes())
    meta = header["__metadata__"]
    key = sorted(meta)[which % len(meta)]
    meta[key] = value
    _load_or_value_error(write("fuzz.safetensors", join_header(header, body)))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3),
       cut=st.integers(0, 10**9) | st.none())
def test_fuzz_pt_files(flips, cut):
    data = bytearray(valid_bytes(".pt"))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    if cut is not None:
        data = data[: cut % len(data)]
    loaded = _load_or_value_error(write("fuzz.pt", bytes(data)))
    if cut is not None:
        assert not loaded


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payloads_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"tensors": {}, "metadata": {}, "x": _Exploit()}, handle)
    with pytest.raises(CorruptFileError, match="cannot read it"):
        load_quantized(path)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


INT4_CASES = {
    "group-size-lies": (_layer("0", group_size=64), r"tensor '0.scale' has shape \[8, 1\], expected \[8, 0\]|multiple"),
    "group-size-invalid": (_layer("0", group_size=100), "field 'group_size' must be one of 32, 64, 128, 256"),
    "shape-lies": (_layer("0", original_shape=[8, 64]), r"tensor '0.qweight' has shape \[8, 16\], expected \[8, 32\]"),
    "odd-in-features": (_layer("0", original_shape=[8, 33]), "not a multiple of group_size"),
}


@pytest.mark.parametrize("case", INT4_CASES)
def test_lying_int4_metadata(case):
    from io_helpers import int4_quantize_linears

    edit, message = INT4_CASES[case]
    model = int4_quantize_linears(nn.Sequential(nn.Linear(32, 8), nn.LayerNorm(8)), group_size=32)
    save_quantized(model, "int4.safetensors")
    edit_metadata(Path("int4.safetensors"), edit)
    with pytest.raises(CorruptFileError, match=message):
        load_quantized("int4.safetensors")
