"""How calls that run or convert the caller's model leave it exactly as it was.

Running a model can change it even in eval mode under ``torch.no_grad()``: a forward may
update a buffer (a step counter, a cache), rebind an attribute, or build a cache of its own.
So a call that
only reads a model (``calibrate``, ``validate``) or returns a new one (``dynamic_quantize``,
``static_quantize``) runs or converts a deep copy (``working_copy``), and every forward it
makes runs in eval mode under no_grad (``inference``), where BatchNorm and Dropout behave as at
inference time.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


def working_copy(model: nn.Module, caller: str, alternative: str = "") -> nn.Module:
    """A deep copy of ``model`` for ``caller`` to run or convert; a model that cannot be copied
    gets a TypeError that says so (``alternative`` adds another way out).

    >>> root = working_copy(model, "calibrate")
    >>> root is not model and root.fc1.weight is not model.fc1.weight
    True
    """
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise TypeError(
            f"could not copy the model ({type(exc).__name__}: {exc}); {caller} works on a deep copy so "
            f"that your model stays untouched; make the model deep-copyable{alternative}"
        ) from exc


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode under ``torch.no_grad()``; each module's training flag is put
    back afterwards, also on error.

    >>> with inference(model):
    ...     y = model(x)
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag
