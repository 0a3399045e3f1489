"""INT8 weight layers: ``QuantizedLinear`` ("int8_linear") and ``QuantizedConv2d`` ("int8_conv2d").

Canonical tensors (docs/design.md): ``qweight`` int8 (symmetric) or uint8 (asymmetric) of the
original weight shape, ``scale`` float32 ``[out]``, ``zero_point`` int32 ``[out]``, optional
float ``bias`` ``[out]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._int8 import dequantize_weight_int8, int8_qdtype
from .._json import brief
from .._reference import INT8_RANGES
from ..nn import QuantizedConv2d, QuantizedLinear
from .base import (
    FLOAT_DTYPES, Expected, LayerFormat, RangeProblem, check_equal, check_range, check_scale, check_uniform, fill_layer,
    require,
)

INT8_STATE_KEYS = {"qweight": "weight", "scale": "weight_scale", "zero_point": "weight_zero_point"}
_CONV_FIELDS = ("stride", "padding", "dilation", "groups", "padding_mode")


class _Int8Format(LayerFormat):
    """What INT8 Linear and Conv2d share; subclasses fix the weight rank and the module."""

    scheme = "int8"
    state_keys = INT8_STATE_KEYS
    rank: int

    def params(self, module: nn.Module) -> dict[str, Any]:
        return {
            "original_shape": self._weight_shape(module),
            "bias": module.bias is not None,
            "symmetric": bool(module.symmetric),
            "per_channel": bool(module.per_channel),
        }

    def _weight_shape(self, module: nn.Module) -> list[int]:
        return list(module.qweight.shape)

    def params_from_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        q, scale, zp = (tensors.get(k) for k in ("qweight", "scale", "zero_point"))
        if q is None or scale is None or zp is None or not set(tensors) <= {"qweight", "scale", "zero_point", "bias"}:
            return None
        out = q.shape[0] if q.dim() else -1
        if (q.dtype not in INT8_RANGES or q.dim() != self.rank or scale.dtype != torch.float32
                or zp.dtype != torch.int32 or tuple(scale.shape) != (out,) or tuple(zp.shape) != (out,)):
            return None
        return {"original_shape": list(q.shape), "bias": "bias" in tensors, "symmetric": q.dtype == torch.int8}

    def check_params(self, params: Mapping[str, Any]) -> None:
        shape = require(params, "original_shape", "shape")
        if len(shape) != self.rank:
            raise ValueError(f"field 'original_shape' must have {self.rank} dimensions; got {shape}")
        require(params, "bias", "bool")
        require(params, "symmetric", "bool")
        if "per_channel" in params:
            require(params, "per_channel", "bool")

    def expected_tensors(self, params: Mapping[str, Any]) -> dict[str, Expected]:
        shape = tuple(params["original_shape"])
        out = (shape[0],)
        expected = {
            "qweight": Expected((int8_qdtype(params["symmetric"]),), shape),
            "scale": Expected((torch.float32,), out),
            "zero_point": Expected((torch.int32,), out),
        }
        if params["bias"]:
            expected["bias"] = Expected(FLOAT_DTYPES, out)
        return expected

    def dequantize(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return dequantize_weight_int8(tensors["qweight"], tensors["scale"], tensors["zero_point"], torch.float32)

    def range_problems(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[RangeProblem]:
        # qweight's dtype bounds its values; what can be wrong is in the quantization parameters.
        q, scale, zp = tensors["qweight"], tensors["scale"], tensors["zero_point"]
        qmin, qmax = INT8_RANGES.get(q.dtype, (0, -1))
        if qmax < qmin:
            return [RangeProblem("qweight", f"is {q.dtype}, not int8 or uint8")]
        problems = check_scale("scale", scale) + check_range("zero_point", zp, qmin, qmax)
        if not problems and q.dtype == torch.int8:
            problems = check_equal("zero_point", zp, 0, "symmetric int8")
        if not problems and params.get("per_channel") is False:
            problems = check_uniform("scale", scale, "per-tensor quantization") + check_uniform(
                "zero_point", zp, "per-tensor quantization")
        return problems

    def describe(self, params: Mapping[str, Any]) -> str:
        dtype = "int8" if params.get("symmetric", True) else "uint8"
        granularity = {True: " per-channel", False: " per-tensor"}.get(params.get("per_channel"), "")
        symmetry = " symmetric" if params.get("symmetric", True) else " asymmetric"
        return f"{dtype}{granularity}{symmetry}"

    def _module_options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``module_type`` beyond the INT8 ones (subclasses add theirs)."""
        return {"symmetric": params["symmetric"], "per_channel": params.get("per_channel", True), "device": "meta"}

    def _fill(self, layer: nn.Module, module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        return fill_layer(layer, module, tensors)

    @staticmethod
    def _bias_mismatch(params: Mapping[str, Any], module: nn.Module) -> str | None:
        if params["bias"] != (module.bias is not None):
            return f"the file {'has' if params['bias'] else 'has no'} bias but the model's layer {'has none' if params['bias'] else 'has one'}"
        return None


class Int8LinearFormat(_Int8Format):
    """``QuantizedLinear``: replaces ``nn.Linear``.

    >>> get_format("int8_linear").params(QuantizedLinear.from_float(nn.Linear(4, 8)))
    {'original_shape': [8, 4], 'bias': True, 'symmetric': True, 'per_channel': True}
    """

    kind = "int8_linear"
    module_type = QuantizedLinear
    float_types = (nn.Linear,)
    rank = 2

    def _weight_shape(self, module: nn.Module) -> list[int]:
        return [module.out_features, module.in_features]  # read from packed storage, qweight would unpack

    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        shape = [module.out_features, module.in_features]
        if shape != list(params["original_shape"]):
            return f"the file holds a [{', '.join(map(str, params['original_shape']))}] weight but the model's Linear is {shape}"
        return self._bias_mismatch(params, module)

    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        layer = self.module_type(module.in_features, module.out_features, params["bias"], **self._module_options(params))
        return self._fill(layer, module, tensors)


class Int8Conv2dFormat(_Int8Format):
    """``QuantizedConv2d``: replaces ``nn.Conv2d``; the params also record stride, padding,
    dilation, groups and padding mode (files made from a state_dict do not know them)."""

    kind = "int8_conv2d"
    module_type = QuantizedConv2d
    float_types = (nn.Conv2d,)
    rank = 4

    def params(self, module: nn.Module) -> dict[str, Any]:
        params = super().params(module)
        for field in _CONV_FIELDS:
            value = getattr(module, field)
            params[field] = list(value) if isinstance(value, tuple) else value
        return params

    def check_params(self, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        for field in ("stride", "dilation"):
            if field in params:
                require(params, field, "pair")
        if "groups" in params and (require(params, "groups", "int") < 1):
            raise ValueError(f"field 'groups' must be >= 1; got {params['groups']}")
        if "padding_mode" in params:
            require(params, "padding_mode", "str")
        if "padding" in params and not (params["padding"] in ("same", "valid") or _is_pair(params["padding"])):
            raise ValueError(f"field 'padding' must be two integers, 'same' or 'valid'; got {brief(params['padding'])}")

    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        shape = list(module.weight.shape)
        if shape != list(params["original_shape"]):
            return f"the file holds a {params['original_shape']} weight but the model's Conv2d weight is {shape}"
        for field in _CONV_FIELDS:
            if field in params:
                ours = getattr(module, field)
                ours = list(ours) if isinstance(ours, tuple) else ours
                if ours != params[field]:
                    return f"the file says {field}={params[field]!r} but the model's Conv2d has {ours!r}"
        return self._bias_mismatch(params, module)

    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        layer = self.module_type(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, params["bias"], module.padding_mode, **self._module_options(params),
        )
        return self._fill(layer, module, tensors)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
