"""Putting modules in place of others inside a model, in every slot that holds them (a shared
module sits under several names), for good or for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

Slots = dict[int, list[tuple[nn.Module, str]]]


def parent_slots(root: nn.Module) -> Slots:
    """``id(child)`` -> every ``(parent, attribute)`` that holds it.

    >>> slots = parent_slots(model)
    """
    slots: Slots = {}
    for parent in root.modules():
        for attr, child in parent._modules.items():
            if child is not None:
                slots.setdefault(id(child), []).append((parent, attr))
    return slots


def put(slots: Slots, replacements: Mapping[nn.Module, nn.Module]) -> None:
    """Put each replacement where its original (the key) is."""
    for original, new in replacements.items():
        for parent, attr in slots.get(id(original), []):
            parent._modules[attr] = new


@contextlib.contextmanager
def swapped(slots: Slots, replacements: Mapping[nn.Module, nn.Module]) -> Iterator[None]:
    """The replacements in place inside the block, the originals back afterwards (also on error).

    >>> with swapped(slots, {model.fc1: q_fc1}):
    ...     y = model(x)
    """
    put(slots, replacements)
    try:
        yield
    finally:
        put(slots, {original: original for original in replacements})
