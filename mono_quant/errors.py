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

    def __reduce__(self):  # pickles (a worker process of quantize_checkpoint sends it back)
        return type(self), (self.path, self.problem)


class ValidationError(ValueError):
    """``validate`` found a failed check and ``on_failure="error"`` was asked for; ``report``
    holds the full ``ValidationReport``."""

    def __init__(self, message: str, report) -> None:
        self.report = report
        super().__init__(message)


class PartialConversionError(RuntimeError):
    """An in-place conversion (``inplace=True``) failed partway: ``converted`` lists the layers
    already replaced, ``layer`` the one that failed. The model is then partly quantized and is
    the caller's to discard (reload it); the original exception is the ``__cause__``."""

    def __init__(self, layer: str, converted: list[str], cause: BaseException) -> None:
        self.layer = layer
        self.converted = list(converted)
        shown = ", ".join(repr(n or "(root)") for n in converted[:5]) + (
            f" and {len(converted) - 5} more" if len(converted) > 5 else "")
        done = f"{len(converted)} layer(s) were already converted ({shown})" if converted else "no layer was converted yet"
        super().__init__(
            f"in-place quantization failed at layer {layer or '(root)'!r} ({type(cause).__name__}: {cause}); "
            f"{done}. The model is partly quantized: discard it and reload the original to try again"
        )
