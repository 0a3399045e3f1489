"""``Scheme``: the small interface every quantization scheme implements.

A scheme turns one selected layer into its quantized form and says how it did, as a
``LayerInfo``. It works on modules (``convert_module``) and on state_dict entries grouped
by layer (``convert_state``). Which layers reach it is decided by ``mono_quant.selection``
from the user's options plus the scheme's ``supported_types`` / ``skip_reason``.

Writing a scheme (for example "int4"):

    class Int4Scheme(Scheme):
        name = "int4"
        supported_types = (nn.Linear,)

        def skip_reason(self, name, module):      # shape limits of this format
            ...
        def convert_module(self, name, module):   # -> (QuantizedLinearInt4, LayerInfo)
            ...
        def skip_state_reason(self, prefix, tensors): ...
        def convert_state(self, prefix, tensors): ...
        @classmethod
        def dequantize_state(cls, tensors, dtype): ...

    register_scheme("int4", Int4Scheme)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..info import LayerInfo

if TYPE_CHECKING:
    from ..config import QuantizationConfig
    from ..info import QuantizationInfo


class Scheme(ABC):
    """One way of converting layers, created once per run with the run's config.

    Class attributes:
      name:            the dtype name it is registered under ("int8", "fp16", ...).
      supported_types: module classes it converts; matched exactly (a subclass of nn.Linear
                       may have its own forward, so it is skipped with a reason).
      whole_model:     True for casts that apply to every module in place (fp16): all modules
                       with floating tensors are converted, the default float types
                       (embeddings, norms), min_params and the tied-weight rule do not apply,
                       and ``supported_types`` is ignored. User rules still apply.

    Methods get a module or tensors that passed selection; they must not modify anything the
    caller still uses except the module handed to ``convert_module`` (a private copy).

    >>> scheme = get_scheme("int8")(QuantizationConfig())
    >>> qlinear, record = scheme.convert_module("fc1", nn.Linear(64, 32))
    """

    name: ClassVar[str] = ""
    supported_types: ClassVar[tuple[type[nn.Module], ...]] = ()
    whole_model: ClassVar[bool] = False

    def __init__(self, config: QuantizationConfig) -> None:
        self.config = config

    def skip_reason(self, name: str, module: nn.Module) -> str | None:
        """Why this supported module cannot be converted by this scheme (e.g. a shape the
        format cannot hold), or None to convert it. Called after the generic rules."""
        return None

    @abstractmethod
    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        """The replacement for ``module`` (or ``module`` itself, changed in place) and its record."""

    @abstractmethod
    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        """Why the state_dict entries of layer ``prefix`` (``{"weight": ..., "bias": ...}``,
        keys without the prefix) cannot be converted, or None to convert them."""

    @abstractmethod
    def convert_state(
        self, prefix: str, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], LayerInfo]:
        """The new entries of layer ``prefix`` (keys without the prefix; e.g. ``weight``,
        ``weight_scale``, ``weight_zero_point``, ``bias``) and its record. Entries the scheme
        does not change are returned as copies."""

    @classmethod
    def dequantize_state(
        cls, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
    ) -> dict[str, torch.Tensor] | None:
        """Float entries of a layer this scheme's ``convert_state`` produced, or None when the
        entries are not in this scheme's format (the next scheme is asked)."""
        return None

    def finish(self, info: QuantizationInfo) -> None:
        """Called once after every layer was handled: add run-level warnings to ``info``."""

    def start_model(self, model: nn.Module) -> None:
        """Called once with the model about to be converted (module mode only), before any
        layer is: with ``inplace=True`` it is the caller's model, still unconverted."""

    def finish_model(self, original: nn.Module, model: nn.Module) -> None:
        """Called once with the caller's model (read only) and the converted copy, after
        every layer was handled (module mode only): model-wide changes such as fp16's dtype
        boundary go here."""
