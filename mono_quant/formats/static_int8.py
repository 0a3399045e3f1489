"""Statically quantized layers: ``StaticQuantizedLinear`` ("static_int8_linear") and
``StaticQuantizedConv2d`` ("static_int8_conv2d").

The INT8 weight tensors of ``formats.int8`` plus the calibrated input quantizer:
``input_scale`` float32 ``[1]`` and ``input_zero_point`` int32 ``[1]``; the params add
``activation_symmetric`` (int8 inputs with zero point 0, or uint8 inputs). Static
quantization has no state_dict mode, so these formats never come from a state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._int8 import int8_qdtype
from .._reference import INT8_RANGES
from ..nn import StaticQuantizedConv2d, StaticQuantizedLinear
from .base import Expected, RangeProblem, check_equal, check_finite, check_range, check_scale, require
from .int8 import Int8Conv2dFormat, Int8LinearFormat

INPUT = (1,)


class _StaticInput:
    """What both static formats add to their INT8 parent (listed first in the bases)."""

    scheme = "static_int8"

    def params(self, module: nn.Module) -> dict[str, Any]:
        return {**super().params(module), "activation_symmetric": bool(module.activation_symmetric)}

    def params_from_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        return None

    def check_params(self, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        require(params, "activation_symmetric", "bool")

    def expected_tensors(self, params: Mapping[str, Any]) -> dict[str, Expected]:
        return {**super().expected_tensors(params), "input_scale": Expected((torch.float32,), INPUT),
                "input_zero_point": Expected((torch.int32,), INPUT)}

    def range_problems(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[RangeProblem]:
        # The static kernel's contract (csrc/mono_quant.h): both scales finite and > 0 and so is
        # their product, zero points inside their operand's range, a finite bias.
        qmin, qmax = INT8_RANGES[int8_qdtype(params["activation_symmetric"])]
        x_scale, x_zp = tensors["input_scale"], tensors["input_zero_point"]
        problems = (super().range_problems(params, tensors) + check_scale("input_scale", x_scale)
                    + check_range("input_zero_point", x_zp, qmin, qmax))
        if not problems and params["activation_symmetric"]:
            problems = check_equal("input_zero_point", x_zp, 0, "symmetric (int8) inputs")
        if not problems and not bool(torch.isfinite(x_scale.float() * tensors["scale"].float()).all()):
            problems = [RangeProblem("input_scale", "times a weight scale overflows float32; the layer "
                                                   "cannot compute a finite output")]
        if "bias" in tensors:
            problems += check_finite("bias", tensors["bias"])
        return problems

    def describe(self, params: Mapping[str, Any]) -> str:
        inputs = "int8" if params.get("activation_symmetric") else "uint8"
        return f"static {super().describe(params)}, {inputs} inputs"

    def _module_options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._module_options(params), "activation_symmetric": params["activation_symmetric"]}


class StaticInt8LinearFormat(_StaticInput, Int8LinearFormat):
    """``StaticQuantizedLinear``: replaces ``nn.Linear``."""

    kind = "static_int8_linear"
    module_type = StaticQuantizedLinear


class StaticInt8Conv2dFormat(_StaticInput, Int8Conv2dFormat):
    """``StaticQuantizedConv2d``: replaces ``nn.Conv2d``."""

    kind = "static_int8_conv2d"
    module_type = StaticQuantizedConv2d
