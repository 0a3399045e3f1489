"""The scheme registry: dtype name -> ``Scheme`` subclass.

Built-in schemes register themselves when ``mono_quant.schemes`` is imported; other
packages (or later parts of mono_quant: "int4", static quantization) call
``register_scheme`` the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Scheme

_SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(name: str, cls: type[Scheme], *, replace: bool = False) -> type[Scheme]:
    """Make ``cls`` the scheme used for ``dtype=name``; returns ``cls`` (usable as a helper
    in a decorator). Registering a taken name needs ``replace=True``.

    >>> register_scheme("int8_rowwise", MyScheme)
    >>> dynamic_quantize(model, "int8_rowwise")
    """
    from .base import Scheme

    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"scheme name must be a non-empty lower-case string; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Scheme)):
        raise TypeError(f"a scheme must be a subclass of mono_quant.schemes.Scheme; got {cls!r}")
    if name in _SCHEMES and _SCHEMES[name] is not cls and not replace:
        raise ValueError(
            f"a scheme named {name!r} is already registered ({_SCHEMES[name].__name__}); "
            "pass replace=True to override it"
        )
    _SCHEMES[name] = cls
    return cls


def get_scheme(name: str) -> type[Scheme]:
    """The scheme class registered for ``name``.

    >>> get_scheme("int8")
    <class 'mono_quant.schemes.int8.Int8Scheme'>
    """
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"no quantization scheme is registered for dtype {name!r}; "
            f"available: {', '.join(map(repr, scheme_names()))}"
        ) from None


def scheme_names() -> tuple[str, ...]:
    """Names of all registered schemes, in registration order."""
    return tuple(_SCHEMES)
