"""Packaging: the `mono-quant` command after `make build`, `--version`, and what the wheel ships."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import mono_quant
from mono_quant.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _dev_command():
    spec = importlib.util.spec_from_file_location("dev_command", ROOT / "scripts" / "dev_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_prints_package_and_torch_versions(capsys):
    import torch

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mono-quant {mono_quant.__version__} (torch {torch.__version__}")


def test_version_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == mono_quant.__version__


def test_build_launcher_runs_the_checkout_from_any_folder(tmp_path):
    # What `make build` writes to .venv/bin/mono-quant; run it from elsewhere, without PYTHONPATH.
    target = tmp_path / "bin" / "mono-quant"
    _dev_command().write_launcher(target, sys.executable, ROOT)
    assert target.stat().st_mode & 0o111
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(target), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"mono-quant {mono_quant.__version__}")
    done = subprocess.run([str(target), "inspect", "missing.safetensors"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no such file" in done.stderr


def test_makefile_build_writes_the_launcher():
    makefile = (ROOT / "Makefile").read_text()
    build = makefile.split("\nbuild:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/dev_command.py $(VENV)/bin/mono-quant" in build


def test_safetensors_extra_brings_numpy():
    # safetensors.torch.save_file needs numpy, which neither torch nor safetensors pulls in.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "numpy" in extras["safetensors"]
    assert any(req.startswith("transformers>=5") for req in extras["transformers"])


def test_wheel_contents_are_in_the_tree():
    # scikit-build-core ships LICENSE (license files) and every file of the package folder.
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "mono_quant" / "py.typed").is_file()


def test_saving_safetensors_works_without_numpy(monkeypatch):
    # pip install 'mono_quant[safetensors]' once came without numpy, and save_file needs it.
    import sys

    import torch

    from mono_quant import dynamic_quantize, load_quantized, save_quantized

    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    q_model, info = dynamic_quantize(model, validate=False)
    save_quantized(q_model, "with.safetensors", info)
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` now fails
    q_model2, info2 = dynamic_quantize(model)  # the default checks save and load a file
    assert info2.validation.checks["load"].status == "passed"
    save_quantized(q_model, "without.safetensors", info)
    with_numpy, _ = load_quantized("with.safetensors")
    without, _ = load_quantized("without.safetensors")
    assert with_numpy.keys() == without.keys() and all(torch.equal(with_numpy[k], without[k]) for k in without)
