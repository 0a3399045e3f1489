"""Shared fixtures: the kernel backend (C and torch reference), small models, a clean cwd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import _kernels


def pytest_configure(config: pytest.Config) -> None:
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
