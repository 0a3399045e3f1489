"""What lies at a path: FIFOs, folders and devices are refused with a clear message (never
waited on) by every reader; stale ``.partial`` files of a killed save are cleaned up by the
next save to the same destination."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mono_quant import dynamic_quantize, load_quantized, quantize_checkpoint, save_quantized
from mono_quant.cli import main
from mono_quant.validate import validate_file

from io_helpers import checkpoint_state

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))


@contextmanager
def no_blocking(path: Path):
    """Fails the test (instead of hanging it) when the code under test waits on the FIFO
    ``path``: after 10 s a writer opens it, which wakes up a blocked reader."""
    woke = []

    def release():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
        except OSError:
            return
        woke.append(True)
        os.close(fd)

    timer = threading.Timer(10.0, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not woke, f"the code waited on the FIFO {path}"


def special(kind: str, name: str) -> Path:
    path = Path(name)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        if not os.path.exists("/dev/null"):
            pytest.skip("no /dev/null")
        path.symlink_to("/dev/null")
    return path


WHAT = {"fifo": "is a FIFO (named pipe), not a regular file", "folder": "is a folder, not a regular file",
        "device": "is a character device, not a regular file"}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("kind", WHAT)
def test_readers_refuse_what_is_not_a_regular_file(capsys, kind, suffix):
    path = special(kind, "model" + suffix)
    message = rf"{path}: {re.escape(WHAT[kind])}; pass the path of a (checkpoint )?file"
    reads = [lambda: load_quantized(path), lambda: load_quantized(path, factory()), lambda: validate_file(path)]
    commands = [["inspect", str(path)], ["validate", str(path)]]
    if kind != "folder":  # a folder is a checkpoint source that holds the file
        reads += [lambda: validate_file(_saved(), original=path), lambda: quantize_checkpoint(path, "out.safetensors")]
        commands += [["validate", _saved(), "--original", str(path)], ["quantize", str(path), "out.safetensors"]]
    with no_blocking(path):
        for read in reads:
            with pytest.raises(OSError, match=message):
                read()
        for argv in commands:
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == 1 and re.fullmatch(f"mono-quant {argv[0]}: error: {message}\n", err), (argv, err)
    assert not Path("out.safetensors").exists()


def _saved() -> str:
    if not Path("good.safetensors").exists():
        qmodel, info = dynamic_quantize(factory(), "int8", min_params=0, validate=False)
        save_quantized(qmodel, "good.safetensors", info)
    return "good.safetensors"


def test_fifo_indexes_shards_and_config_files(capsys):
    state = checkpoint_state()
    Path("set").mkdir()
    save_file(state, "set/a.safetensors")
    os.mkfifo("set/b.safetensors")
    Path("set/model.safetensors.index.json").write_text(
        '{"weight_map": {"%s": "a.safetensors", "x": "b.safetensors"}}' % next(iter(state)))
    os.mkfifo("index.safetensors.index.json")
    os.mkfifo("q.toml")
    save_file(state, "model.safetensors")
    with no_blocking(Path("set/b.safetensors")):
        with pytest.raises(OSError, match="b.safetensors: is a FIFO"):
            quantize_checkpoint("set/model.safetensors.index.json", "out.safetensors")
    with no_blocking(Path("index.safetensors.index.json")):
        with pytest.raises(OSError, match="index.safetensors.index.json: is a FIFO"):
            quantize_checkpoint("index.safetensors.index.json", "out.safetensors")
    with no_blocking(Path("q.toml")):
        code = main(["quantize", "model.safetensors", "out.safetensors", "--config", "q.toml"])
        assert code == 1 and "q.toml: is a FIFO (named pipe), not a regular file; pass the path of a config file" in \
            capsys.readouterr().err
    os.mkfifo("mono_quant.toml")  # the settings file found in the current folder
    with no_blocking(Path("mono_quant.toml")):
        code = main(["quantize", "model.safetensors", "out.safetensors"])
        assert code == 1 and "mono_quant.toml: is a FIFO" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Stale partial files of a save killed with SIGKILL.
# ---------------------------------------------------------------------------------------------

KILLED_SAVE = """
import os, signal, sys, torch
from torch import nn
from mono_quant import dynamic_quantize, quantize_checkpoint, save_quantized

os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed just before the rename
dst = sys.argv[1]
if sys.argv[2] == "save":
    torch.manual_seed(0)
    qmodel, info = dynamic_quantize(nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4)), "int8",
                                    min_params=0, validate=False)
    save_quantized(qmodel, dst, info)
else:
    quantize_checkpoint("model.safetensors", dst, "int8")
"""


def _killed(dst: str, how: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, dst, how], env=env, timeout=120, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def test_a_save_killed_with_sigkill_is_cleaned_up_by_the_next_save():
    save_file(checkpoint_state(), "model.safetensors")
    _killed("q.safetensors", "stream")  # quantize_checkpoint: leaves the data scratch and the output
    _killed("m.pt", "save")
    assert sorted(p.name for p in Path().iterdir()) == [
        "m.pt.partial", "model.safetensors", "q.safetensors.data.partial", "q.safetensors.partial"]
    qmodel, info = dynamic_quantize(factory(), "int8", min_params=0, validate=False)
    save_quantized(qmodel, "q.safetensors", info)
    save_quantized(qmodel, "m.pt", info)
    assert sorted(p.name for p in Path().iterdir()) == ["m.pt", "model.safetensors", "q.safetensors"]
    x = torch.randn(2, 32)
    for name in ("q.safetensors", "m.pt"):
        assert torch.equal(load_quantized(name, factory())(x), qmodel(x))


@pytest.mark.parametrize("writer", ["save_quantized", "quantize_checkpoint"])
def test_stale_partial_files_never_survive_a_save(writer):
    save_file(checkpoint_state(), "model.safetensors")
    Path("elsewhere.bin").write_bytes(b"keep me")
    Path("out.safetensors.partial").symlink_to("elsewhere.bin")  # a save must not write through it
    Path("out.safetensors.data.partial").write_bytes(b"\0" * 4096)
    if writer == "save_quantized":
        qsd, info = dynamic_quantize(checkpoint_state(), "int8", validate=False)
        save_quantized(qsd, "out.safetensors", info)
    else:
        quantize_checkpoint("model.safetensors", "out.safetensors", "int8")
    assert sorted(p.name for p in Path().iterdir()) == ["elsewhere.bin", "model.safetensors", "out.safetensors"]
    assert Path("elsewhere.bin").read_bytes() == b"keep me" and not Path("out.safetensors").is_symlink()
    load_quantized("out.safetensors")
