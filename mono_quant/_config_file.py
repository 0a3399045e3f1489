"""Finding and reading the TOML file that holds a project's quantization settings.

Two places are read: a ``mono_quant.toml`` whose top-level keys are the options, or the
``[tool.mono_quant]`` table of a ``pyproject.toml``. This module only returns plain dicts;
``QuantizationConfig`` validates them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._files import check_regular, open_regular

CONFIG_FILE_NAME = "mono_quant.toml"
PYPROJECT_NAME = "pyproject.toml"


def find_config_file(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The settings file that applies in ``directory`` (default: the current directory), or None.

    >>> find_config_file()            # ./mono_quant.toml first, then ./pyproject.toml
    PosixPath('mono_quant.toml')
    """
    base = Path.cwd() if directory is None else Path(directory)
    own = base / CONFIG_FILE_NAME
    if os.path.lexists(own):  # a folder or FIFO under the name is an error, not silently no settings
        check_regular(own, "config file")
        return own
    pyproject = base / PYPROJECT_NAME
    if pyproject.is_file() and "mono_quant" in _load_toml(pyproject).get("tool", {}):
        return pyproject
    return None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options stored in ``path``: its ``[tool.mono_quant]`` table for a pyproject.toml,
    else its top-level keys. Option names may use ``-`` or ``_``.

    >>> read_config_file("mono_quant.toml")
    {'dtype': 'int8', 'min_params': 1024}
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(
            f"config file {str(path)!r} does not exist; pass the path of a {CONFIG_FILE_NAME} "
            f"or a {PYPROJECT_NAME} with a [tool.mono_quant] table"
        )
    data = _load_toml(path)
    if path.name == PYPROJECT_NAME:
        table = data.get("tool", {}).get("mono_quant")
        if table is None:
            raise ValueError(
                f"{path} has no [tool.mono_quant] table; add one with your options "
                "(for example `dtype = \"int8\"`) or pass another config file"
            )
        data = table
    if not isinstance(data, dict):
        raise ValueError(f"{path}: [tool.mono_quant] must be a table of options")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _load_toml(path: Path) -> dict[str, Any]:
    toml = _toml_module()
    try:
        with open_regular(path, "config file") as handle:  # a FIFO is refused, never waited on
            return toml.load(handle)
    except toml.TOMLDecodeError as exc:
        raise ValueError(f"could not parse {path} as TOML: {exc}") from exc


def _toml_module():
    try:
        import tomllib  # Python >= 3.11

        return tomllib
    except ModuleNotFoundError:
        pass
    try:
        import tomli

        return tomli
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading a mono_quant config file needs a TOML parser: on Python 3.10 run "
            "`pip install tomli`, or pass the options as keyword arguments instead"
        ) from None
