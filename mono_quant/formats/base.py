"""``LayerFormat``: how one quantized module type is saved, checked, rebuilt and validated.

Saving, loading, ``validate`` and ``mono-quant inspect`` talk to quantized layers only through
this interface, so a new module type plugs in with one subclass and one ``register_format``
call. A format describes a layer by a small JSON-able dict of ``params`` (saved in the file's
metadata); everything else (tensor dtypes and shapes, the module) follows from the params.

Tensor names are the module's buffer names (``qweight``, ``scale``, ...). Files made from a
state_dict (``dynamic_quantize(state_dict)``, ``quantize_checkpoint``) use the state_dict keys
(``weight``, ``weight_scale``, ...); ``state_keys`` maps one to the other.

Writing a format (for example INT4):

    class Int4LinearFormat(LayerFormat):
        kind = "int4_linear"
        scheme = "int4"
        module_type = QuantizedLinearInt4
        float_types = (nn.Linear,)
        state_keys = {"qweight": "weight", "scale": "weight_scale", "zero_point": "weight_zero_point"}
        def params(self, module): ...            # {"original_shape": [out, in], "group_size": 128, ...}
        def params_from_state(self, tensors): ...
        def check_params(self, params): ...
        def expected_tensors(self, params): ...
        def skeleton_mismatch(self, params, module): ...
        def build(self, params, module, tensors): ...
        def dequantize(self, params, tensors): ...
        def range_problems(self, params, tensors): ...
        def describe(self, params): ...

    register_format(Int4LinearFormat())
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._json import brief

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Expected:
    """The dtypes a tensor may have and its exact shape."""

    dtypes: tuple[torch.dtype, ...]
    shape: tuple[int, ...]

    def problem(self, tensor: torch.Tensor) -> str | None:
        """Why ``tensor`` does not fit, or None."""
        if tensor.dtype not in self.dtypes:
            allowed = " or ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"is {str(tensor.dtype).removeprefix('torch.')}, expected {allowed}"
        if tuple(tensor.shape) != self.shape:
            return f"has shape {list(tensor.shape)}, expected {list(self.shape)}"
        return None


class LayerFormat(ABC):
    """One quantized module type as stored in files.

    Class attributes:
      kind:        the name saved in the metadata ("int8_linear"); unique.
      scheme:      the scheme (dtype) name that produces it ("int8").
      module_type: the quantized module class.
      float_types: the float module classes it replaces in a model skeleton.
      state_keys:  module tensor name -> state_dict-mode key (names not listed are the same).

    >>> fmt = format_for_module(qmodel.fc)
    >>> fmt.expected_tensors(fmt.params(qmodel.fc))["scale"]
    Expected(dtypes=(torch.float32,), shape=(32,))
    """

    kind: ClassVar[str] = ""
    scheme: ClassVar[str] = ""
    module_type: ClassVar[type[nn.Module]]
    float_types: ClassVar[tuple[type[nn.Module], ...]] = ()
    state_keys: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def params(self, module: nn.Module) -> dict[str, Any]:
        """The JSON-able description of a quantized ``module``; includes ``original_shape``."""

    @abstractmethod
    def params_from_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        """The description of a state_dict layer (tensors under module names), or None when
        the tensors are not in this format."""

    @abstractmethod
    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise ValueError (saying which field is wrong) unless ``params`` is well formed."""

    @abstractmethod
    def expected_tensors(self, params: Mapping[str, Any]) -> dict[str, Expected]:
        """Every tensor the layer holds, by module name, with its dtypes and shape."""

    @abstractmethod
    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        """Why float ``module`` (possibly on the meta device) cannot take this layer, or None."""

    @abstractmethod
    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        """The quantized module replacing float ``module``, holding ``tensors`` (not copied)."""

    @abstractmethod
    def dequantize(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The float32 weight the layer computes with (for SQNR)."""

    @abstractmethod
    def range_problems(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[RangeProblem]:
        """Every value the format does not allow (scales not finite and > 0, zero points outside
        their range, ...), each naming its tensor. Empty for a well-formed layer. Saving and
        loading refuse a layer with problems; ``validate`` reports them. Called on the
        canonical tensors (as a file holds them), never on module internals."""

    @abstractmethod
    def describe(self, params: Mapping[str, Any]) -> str:
        """One line for reports: "int8 per-channel symmetric"."""

    def to_module_names(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """State_dict-mode keys -> module tensor names."""
        inverse = {v: k for k, v in self.state_keys.items()}
        return {inverse.get(key, key): t for key, t in tensors.items()}

    def state_key(self, name: str) -> str:
        """Module tensor name -> state_dict-mode key."""
        return self.state_keys.get(name, name)


# ---------------------------------------------------------------------------------------------
# Small helpers for formats.
# ---------------------------------------------------------------------------------------------


def require(params: Mapping[str, Any], key: str, kind: str) -> Any:
    """``params[key]`` checked to be a "bool", "int" (>= 0), "str", "shape" (list of ints
    >= 1) or "pair" (two ints >= 0); a ValueError naming the field otherwise."""
    if key not in params:
        raise ValueError(f"field {key!r} is missing")
    value = params[key]
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": _is_count,
        "str": lambda v: isinstance(v, str),
        "shape": lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_count(d) and d >= 1 for d in v),
        "pair": lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_count, v)),
    }[kind](value)
    if not ok:
        raise ValueError(f"field {key!r} must be a {kind}; got {brief(value)}")
    return value


@dataclass(frozen=True)
class RangeProblem:
    """A value a format does not allow: ``tensor`` is the module tensor name ("scale"),
    ``problem`` says what is wrong; ``str()`` gives "scale has 1 value(s) <= 0 (min -1)"."""

    tensor: str
    problem: str

    def __str__(self) -> str:
        return f"{self.tensor} {self.problem}"


def check_scale(name: str, scale: torch.Tensor) -> list[RangeProblem]:
    """Problems of a scale tensor: not finite or not positive."""
    s = scale.detach().float()
    finite = torch.isfinite(s)
    if not bool(finite.all()):
        return [RangeProblem(name, f"has {int((~finite).sum())} non-finite value(s)")]
    if s.numel() and not bool((s > 0).all()):
        return [RangeProblem(name, f"has {int((s <= 0).sum())} value(s) <= 0 (min {float(s.min()):g})")]
    return []


def check_finite(name: str, tensor: torch.Tensor) -> list[RangeProblem]:
    """Problems of a float tensor that must be finite (a bias the kernels add)."""
    finite = torch.isfinite(tensor.detach())
    if not bool(finite.all()):
        return [RangeProblem(name, f"has {int((~finite).sum())} non-finite value(s)")]
    return []


def check_range(name: str, tensor: torch.Tensor, low: int, high: int) -> list[RangeProblem]:
    """Problems of an integer tensor whose values must lie in ``[low, high]``."""
    if tensor.numel() == 0:
        return []
    mn, mx = int(tensor.min()), int(tensor.max())
    if mn < low or mx > high:
        return [RangeProblem(name, f"has values in [{mn}, {mx}], outside [{low}, {high}]")]
    return []


def check_equal(name: str, tensor: torch.Tensor, value: int, why: str) -> list[RangeProblem]:
    """Problems of an integer tensor whose values must all be ``value`` (``why`` says why)."""
    if tensor.numel() == 0:
        return []
    mn, mx = int(tensor.min()), int(tensor.max())
    if mn != value or mx != value:
        return [RangeProblem(name, f"has values in [{mn}, {mx}]; {why} needs {value} everywhere")]
    return []


def check_uniform(name: str, tensor: torch.Tensor, why: str) -> list[RangeProblem]:
    """Problems of a tensor whose values must all be the same (``why`` says why)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() and not bool((flat == flat[0]).all()):
        return [RangeProblem(name, f"holds different values; {why} stores one value repeated")]
    return []


def fill_layer(layer: nn.Module, module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """``layer`` holding ``tensors`` (by module tensor name) with ``module``'s training flag.
    A packed Linear layer takes its weight through ``set_weight`` (packed once; the file's
    canonical tensors are not kept), other layers hold the tensors as their buffers."""
    rest = dict(tensors)
    if hasattr(layer, "set_weight"):
        layer.set_weight(rest.pop("qweight"), rest.pop("scale"), rest.pop("zero_point"))
    for name, tensor in rest.items():
        setattr(layer, name, tensor)
    layer.train(module.training)
    return layer


def numel(shape) -> int:
    return math.prod(shape)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
