"""Exceptions that callers may want to catch by type.

>>> try:
...     load_quantized("model.safetensors", model)
... except CorruptFileError as exc:
...     print(exc)        # "model.safetensors: tensor 'fc.qweight' ends at byte 900, ..."
"""

from __future__ import annotations

import os


class CorruptFileError(ValueError):
    """A saved file that cannot be trusted: truncated, corrupted, hand-crafted, or not matching
    the model it is loaded into. The message starts with the file name and says what is wrong.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ValidationError(ValueError):
    """``validate`` found a failed check and ``on_failure="error"`` was asked for; ``report``
    holds the full ``ValidationReport``."""

    def __init__(self, message: str, report) -> None:
        self.report = report
        super().__init__(message)
