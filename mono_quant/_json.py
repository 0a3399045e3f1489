"""JSON from files that may be hand-crafted: the parse never raises anything but ``ValueError``
(or ``RecursionError``) and never lets a number through that the caller could overflow on.

``json.loads`` alone raises a bare ``ValueError`` for an integer of more than 4,300 digits
(CPython's int-to-str limit) and turns ``1e400`` into ``inf``. Here every integer of more than
``MAX_INT_DIGITS`` digits becomes an ``OversizedInt`` and every float literal outside float64's
finite range an ``OversizedFloat``: neither is an ``int`` or ``float``, so the field checks that
follow reject it with the field's name ("field 'shape' must be ...; got <a 5000-digit
integer>"), and NaN / Infinity literals are refused.

>>> loads_untrusted('{"shape": [1, 2]}')
{'shape': [1, 2]}
>>> loads_untrusted('[' + '9' * 5000 + ']')
[<a 5000-digit integer>]
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import Any

# 2**64 has 20 digits: no field of a safetensors header or of mono_quant's metadata needs more.
MAX_INT_DIGITS = 20


class OversizedInt:
    """An integer literal too long to be any real field's value (kept as its digit count)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a {self.digits}-digit integer>"


class OversizedFloat:
    """A float literal outside float64's finite range (``1e400``), which Python reads as inf."""

    def __init__(self, text: str) -> None:
        self.text = text if len(text) <= 24 else text[:20] + "..."

    def __repr__(self) -> str:
        return f"<{self.text}, beyond float64>"


_BRIEF = reprlib.Repr()
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 200, 60, 40
_BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxtuple = 8


def brief(value: Any) -> str:
    """``repr(value)`` cut to a readable length, for messages about untrusted values (a
    header can hold a million-element shape or a megabyte name).

    >>> brief(list(range(100)))
    '[0, 1, 2, 3, 4, 5, 6, 7, ...]'
    """
    return _BRIEF.repr(value)


def loads_untrusted(text: str | bytes, object_pairs_hook: Callable[[list], Any] | None = None) -> Any:
    """``json.loads`` for untrusted text (see the module docstring). ``ValueError`` (a
    ``json.JSONDecodeError`` for bad syntax) or ``RecursionError`` for deep nesting otherwise."""
    import json

    return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant,
                      object_pairs_hook=object_pairs_hook)


def _parse_int(text: str) -> int | OversizedInt:
    digits = len(text) - text.startswith("-")
    return OversizedInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _parse_float(text: str) -> float | OversizedFloat:
    value = float(text)
    return value if math.isfinite(value) else OversizedFloat(text)


def _reject_constant(name: str):
    raise ValueError(f"it contains {name}, which is not JSON")
