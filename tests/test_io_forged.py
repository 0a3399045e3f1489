"""Forged headers and metadata that once escaped CorruptFileError (a shape whose strides overflow,
integers of thousands of digits, an SQNR beyond float range): every one is a CorruptFileError
naming the file and the field, from the API and from each CLI command (exit code 1, one line
on stderr, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, save_quantized
from mono_quant.cli import main

from io_helpers import split_header

ROOT = Path(__file__).resolve().parent.parent
BIG = "9" * 5000  # beyond CPython's 4,300-digit int parsing limit


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))


def saved(path: str = "model.safetensors") -> Path:
    qmodel, info = dynamic_quantize(factory(), "int8", min_params=0, validate=False)
    return save_quantized(qmodel, path, info)


def forge(path: Path, edit) -> Path:
    """``edit(header)`` may put the string "@BIG@" anywhere (also inside a metadata JSON string,
    as "@BIG@" quoted there); the file then holds a 5000-digit integer in its place."""
    header, body = split_header(path.read_bytes())
    edit(header)
    text = json.dumps(header).replace('\\"@BIG@\\"', BIG).replace('"@BIG@"', BIG).replace('"@HUGE@"', "1e400")
    text = text.encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)
    return path


def empty_entry(shape):
    """A tensor entry that holds no bytes, placed at the end of the data section."""
    def edit(header):
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        header["extra"] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end]}
    return edit


def layer_field(field, value):
    def edit(header):
        record = json.loads(header["__metadata__"]["layer:0"])
        record[field] = value
        header["__metadata__"]["layer:0"] = json.dumps(record)
    return edit


def raw_sqnr(literal):
    def edit(header):
        record = header["__metadata__"]["layer:0"]
        header["__metadata__"]["layer:0"] = record.replace('"sqnr_db":', f'"sqnr_db":{literal},"was":', 1)
    return edit


def entry_field(field, value):
    return lambda header: header["0.qweight"].update({field: value})


HEADER_CASES = {  # forgeries of the safetensors header itself: every reader stops at them
    "shape-2^64": (empty_entry([0, 2**64]), r"tensor 'extra': shape \[0, 18446744073709551616\] is too large"),
    "shape-2^62x2^62": (empty_entry([0, 2**62, 2**62]), "tensor 'extra': shape .* is too large"),
    "big-int-in-shape": (entry_field("shape", ["@BIG@", 1]), r"tensor '0.qweight': shape \[<a 5000-digit integer>"),
    "big-int-offset": (entry_field("data_offsets", [0, "@BIG@"]), "tensor '0.qweight': data_offsets"),
    "big-int-dtype": (entry_field("dtype", "@BIG@"), "tensor '0.qweight' has unknown dtype <a 5000-digit integer>"),
    "big-int-metadata": (lambda h: h["__metadata__"].update(note="@BIG@"),
                         "'__metadata__' must map strings to strings; field 'note' is <a 5000-digit integer>"),
    "big-int-entry": (lambda h: h.update(junk="@BIG@"), "tensor 'junk': the entry must have exactly the keys"),
    "huge-float": (entry_field("shape", ["@HUGE@"]), r"tensor '0.qweight': shape \[<1e400, beyond float64>\]"),
}
METADATA_CASES = {  # forgeries inside mono_quant's metadata: files that are mono_quant's own
    "big-int-layer-field": (layer_field("bias", "@BIG@"), "layer '0': field 'bias' holds <a 5000-digit integer>, "
                                                           "which is out of range"),
    "big-int-checksum": (lambda h: h["__metadata__"].update(checksums='{"0.qweight": "@BIG@"}'),
                         "'checksums' must be a JSON object of valid values"),
    "big-int-extra-field": (layer_field("note", [1, "@BIG@"]), "layer '0': field 'note' holds"),
    "sqnr-400-digits": (raw_sqnr("9" * 400), "layer '0': field 'sqnr_db' holds <a 400-digit integer>, which is "
                                              "out of range"),
    "sqnr-1e400": (raw_sqnr("1e400"), "layer '0': field 'sqnr_db' holds <1e400, beyond float64>"),
    "dict-as-dtype-name": (layer_field("original_dtype", {"a": 1}), "layer '0': field 'original_dtype' must be a "
                                                                     "float dtype name or null; got {'a': 1}"),
}
CASES = {**HEADER_CASES, **METADATA_CASES}


@pytest.mark.parametrize("case", CASES)
def test_the_api_names_the_file_and_the_field(case):
    edit, message = CASES[case]
    path = forge(saved(), edit)
    for model in (None, factory()):
        with pytest.raises(CorruptFileError, match=message) as caught:
            load_quantized(path, model)
        assert str(caught.value).startswith(f"{path}: ") and len(str(caught.value)) < 600


@pytest.mark.parametrize("case", CASES)
def test_every_command_gives_one_line(capsys, case):
    edit, message = CASES[case]
    path = forge(saved(), edit)
    for argv in (["inspect", str(path)], ["validate", str(path)], ["quantize", str(path), "out.safetensors"]):
        code = main(argv)
        out, err = capsys.readouterr()
        if argv[0] == "quantize" and case in METADATA_CASES:
            assert code == 0  # a source's metadata is not read: only its tensors are
            continue
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert f"{path}: " in err and len(err) < 800, (argv, err)
        if argv[0] != "validate":  # validate prints the reason in its report and names the check on stderr
            assert err.startswith(f"mono-quant {argv[0]}: error: {path}: "), err
        else:
            assert err.startswith(f"mono-quant validate: load check failed: {path}: "), err


def test_streaming_source_with_overflowing_shape():
    from mono_quant import quantize_checkpoint
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.randn(8, 32)}, "model.safetensors")
    forge(Path("model.safetensors"), lambda h: h.update(
        {"fc.bias": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [1024, 1024]}}))
    with pytest.raises(CorruptFileError, match="model.safetensors: tensor 'fc.bias': shape .* is too large"):
        quantize_checkpoint("model.safetensors", "out.safetensors")


def test_inspect_in_a_subprocess_prints_no_traceback():
    path = forge(saved(), raw_sqnr("9" * 400))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mono_quant", "inspect", str(path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "field 'sqnr_db'" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Header bombs: refused from the header length and the file size, before the header is read.
# ---------------------------------------------------------------------------------------------

def _bomb_bytes(entries: int, metadata: bool = True) -> bytes:
    """A header of ``entries`` empty tensors (~60 bytes each) and no data."""
    meta = '"__metadata__":{"format":"mono_quant"},' if metadata else ""
    body = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(entries))
    text = ("{" + meta + body + "}").encode()
    return len(text).to_bytes(8, "little") + text


def _refuse_parsing(monkeypatch):
    from mono_quant import _safetensors

    def parse(raw, path):
        raise AssertionError("the header was parsed")
    monkeypatch.setattr(_safetensors, "_parse_json", parse)
    return monkeypatch


def _assert_refused_quickly(path: Path, message: str) -> None:
    import time
    import tracemalloc

    from mono_quant.cli import inspect_text
    from mono_quant import quantize_checkpoint

    for attempt in (lambda: load_quantized(path), lambda: load_quantized(path, factory()),
                    lambda: inspect_text(str(path)), lambda: quantize_checkpoint(path, "out.safetensors")):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(CorruptFileError, match=message):
            attempt()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 0.5 and peak < 4 << 20, (elapsed, peak)


def test_a_header_bomb_is_refused_before_it_is_read(monkeypatch):
    path = Path("bomb.safetensors")
    path.write_bytes(_bomb_bytes(80_000))  # ~5 MiB of empty entries, no data
    _refuse_parsing(monkeypatch)
    _assert_refused_quickly(path, r"bomb.safetensors: the header is \d+ bytes for 0 bytes of tensor data; a real "
                                  "header needs at most 4194304 bytes plus 1/16 of the data")


def test_the_70_mb_bomb_of_the_report(monkeypatch):
    """The report's bomb: a 70 MB header in front of no data (the header's content does not
    matter, it is never read: the file is sparse)."""
    path = Path("bomb.safetensors")
    with open(path, "wb") as handle:
        handle.write((70_000_000).to_bytes(8, "little") + b"{")
        handle.truncate(8 + 70_000_000)
    _refuse_parsing(monkeypatch)
    _assert_refused_quickly(path, "the header is 70000000 bytes for 0 bytes of tensor data")


def test_a_header_without_metadata_is_refused_before_parsing(monkeypatch):
    path = Path("plain.safetensors")
    path.write_bytes(_bomb_bytes(20_000, metadata=False))  # under the size limit
    with monkeypatch.context() as patch:
        _refuse_parsing(patch)
        with pytest.raises(CorruptFileError, match="plain.safetensors: the header has no '__metadata__'; this is "
                                                   "not a mono_quant file"):
            load_quantized(path)
    escaped = _bomb_bytes(3, metadata=False).replace(b'"t0"', b'"\\u0074"')  # escapes: the parser decides
    Path("escaped.safetensors").write_bytes(len(escaped[8:]).to_bytes(8, "little") + escaped[8:])
    with pytest.raises(CorruptFileError, match="not a mono_quant file"):
        load_quantized("escaped.safetensors")


def test_the_header_limit_leaves_room_for_real_files():
    from mono_quant import _safetensors as st

    state = {f"block{i}.fc.weight": torch.randn(4, 4) for i in range(1000)}  # tiny layers, long header
    qsd, info = dynamic_quantize(state, "int8", min_params=0, validate=False)
    save_quantized(qsd, "deep.safetensors", info)
    data = Path("deep.safetensors").read_bytes()
    length = int.from_bytes(data[:8], "little")
    assert length > len(data) - 8 - length  # more header than data, as in no real model
    tensors, _ = load_quantized("deep.safetensors")
    assert len(tensors) == 3000
    assert st.header_limit(0) == 4 << 20 and st.header_limit(16 << 30) == st.MAX_HEADER_BYTES
