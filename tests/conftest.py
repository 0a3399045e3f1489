"""Shared fixtures: the kernel backend (C and torch reference), a clean cwd, fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import mono_quant
from mono_quant import _kernels


def pytest_configure(config: pytest.Config) -> None:
    # `make test` builds the extension; a silent fall back to torch would skip the C tests.
    if os.environ.get("MONO_QUANT_REQUIRE_C") and not _kernels.c_available():
        raise pytest.UsageError(f"mono_quant._C did not import: {_kernels.c_import_error()}")
    # The sanitizer run must test the sanitized build, not a copy that happens to be on sys.path.
    expected = os.environ.get("MONO_QUANT_EXPECT_ROOT")
    if expected and Path(expected).resolve() not in Path(mono_quant.__file__).resolve().parents:
        raise pytest.UsageError(f"imported {mono_quant.__file__}, expected the package under {expected}")
    # A source tree without a build runs on the torch kernels and says so once; that is expected here.
    config.addinivalue_line("filterwarnings", "ignore:mono_quant._C is not built:RuntimeWarning")


@pytest.fixture(params=["c", "reference"])
def backend(request: pytest.FixtureRequest):
    """Runs a test once on the C kernels (when built) and once on the torch reference."""
    if request.param == "c" and not _kernels.c_available():
        pytest.skip("the C extension mono_quant._C is not built")
    with _kernels.use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No stray mono_quant.toml / pyproject.toml applies, and random numbers repeat."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
