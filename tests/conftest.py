"""Shared fixtures: every kernel-touching test runs on the C backend and the torch reference."""

import os

import pytest

from mono_quant import _kernels


def pytest_configure(config):
    # `make test` builds the extension; a silent fall back to torch would skip the C tests.
    if os.environ.get("MONO_QUANT_REQUIRE_C") and not _kernels.c_available():
        raise pytest.UsageError(f"mono_quant._C did not import: {_kernels.c_import_error()}")


@pytest.fixture(params=["c", "reference"])
def backend(request):
    """Run the test once on the C kernels and once on the pure-torch reference."""
    if request.param == "c" and not _kernels.c_available():
        pytest.skip("C extension not built")
    with _kernels.use_backend(request.param):
        yield request.param
