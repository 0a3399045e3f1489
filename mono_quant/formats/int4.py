"""INT4 weight layers: ``QuantizedLinearInt4`` ("int4_linear").

Canonical tensors (docs/design.md): ``qweight`` uint8 ``[out, in // 2]`` (even input index in
the low nibble), ``scale`` float16 ``[out, in // g]``, ``zero_point`` uint8 ``[out, in // g]``
(values 0..15; 8 when symmetric), optional float ``bias`` ``[out]``; ``g`` in 32, 64, 128, 256.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import _kernels as K
from ..nn.qlinear_int4 import QuantizedLinearInt4
from .base import (
    FLOAT_DTYPES, Expected, LayerFormat, RangeProblem, check_equal, check_range, check_scale, fill_layer, require,
)
from .int8 import INT8_STATE_KEYS

INT4_ZERO_POINT_MAX = 15
SYMMETRIC_ZERO_POINT = 8


class Int4LinearFormat(LayerFormat):
    """``QuantizedLinearInt4``: replaces ``nn.Linear``; params add ``group_size``.

    >>> get_format("int4_linear").params(QuantizedLinearInt4.from_float(nn.Linear(128, 8)))
    {'original_shape': [8, 128], 'bias': True, 'symmetric': True, 'group_size': 128}
    """

    kind = "int4_linear"
    scheme = "int4"
    module_type = QuantizedLinearInt4
    float_types = (nn.Linear,)
    state_keys = INT8_STATE_KEYS  # the same state_dict names as INT8: weight, weight_scale, weight_zero_point

    def params(self, module: nn.Module) -> dict[str, Any]:
        return {
            "original_shape": [module.out_features, module.in_features],
            "bias": module.bias is not None,
            "symmetric": bool(module.symmetric),
            "group_size": int(module.group_size),
        }

    def params_from_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        q, scale, zp = (tensors.get(k) for k in ("qweight", "scale", "zero_point"))
        if q is None or scale is None or zp is None or not set(tensors) <= {"qweight", "scale", "zero_point", "bias"}:
            return None
        if (q.dtype != torch.uint8 or scale.dtype != torch.float16 or zp.dtype != torch.uint8 or q.dim() != 2
                or scale.dim() != 2 or tuple(zp.shape) != tuple(scale.shape) or scale.shape[0] != q.shape[0]
                or scale.shape[1] == 0):
            return None
        in_features = 2 * q.shape[1]
        group_size, rest = divmod(in_features, scale.shape[1])
        if rest or group_size not in K.INT4_GROUP_SIZES:
            return None
        return {
            "original_shape": [q.shape[0], in_features],
            "bias": "bias" in tensors,
            "symmetric": bool((zp == SYMMETRIC_ZERO_POINT).all()),
            "group_size": group_size,
        }

    def check_params(self, params: Mapping[str, Any]) -> None:
        shape = require(params, "original_shape", "shape")
        if len(shape) != 2:
            raise ValueError(f"field 'original_shape' must have 2 dimensions; got {shape}")
        group_size = require(params, "group_size", "int")
        if group_size not in K.INT4_GROUP_SIZES:
            raise ValueError(f"field 'group_size' must be one of {', '.join(map(str, K.INT4_GROUP_SIZES))}; "
                             f"got {group_size}")
        if shape[1] % group_size:
            raise ValueError(f"in_features {shape[1]} is not a multiple of group_size {group_size}")
        require(params, "bias", "bool")
        require(params, "symmetric", "bool")

    def expected_tensors(self, params: Mapping[str, Any]) -> dict[str, Expected]:
        out, in_features = params["original_shape"]
        groups = (out, in_features // params["group_size"])
        expected = {
            "qweight": Expected((torch.uint8,), (out, in_features // 2)),
            "scale": Expected((torch.float16,), groups),
            "zero_point": Expected((torch.uint8,), groups),
        }
        if params["bias"]:
            expected["bias"] = Expected(FLOAT_DTYPES, (out,))
        return expected

    def skeleton_mismatch(self, params: Mapping[str, Any], module: nn.Module) -> str | None:
        shape = [module.out_features, module.in_features]
        if shape != list(params["original_shape"]):
            return f"the file holds a {params['original_shape']} weight but the model's Linear is {shape}"
        if params["bias"] != (module.bias is not None):
            return f"the file {'has' if params['bias'] else 'has no'} bias but the model's layer {'has none' if params['bias'] else 'has one'}"
        return None

    def build(self, params: Mapping[str, Any], module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        layer = QuantizedLinearInt4(
            module.in_features, module.out_features, params["bias"], group_size=params["group_size"],
            symmetric=params["symmetric"], device="meta",
        )
        return fill_layer(layer, module, tensors)

    def dequantize(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return K.int4_dequantize(tensors["qweight"], tensors["scale"], tensors["zero_point"], params["group_size"],
                                 torch.float32)

    def range_problems(self, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[RangeProblem]:
        # Nibbles are 0..15 by construction; zero points are stored in a byte and must be too.
        # Any finite positive float16 is a scale the quantizer can store (2^-24 .. 65504).
        zp = tensors["zero_point"]
        problems = check_scale("scale", tensors["scale"]) + check_range("zero_point", zp, 0, INT4_ZERO_POINT_MAX)
        if not problems and params.get("symmetric"):
            problems = check_equal("zero_point", zp, SYMMETRIC_ZERO_POINT, "symmetric int4")
        return problems

    def describe(self, params: Mapping[str, Any]) -> str:
        symmetry = "symmetric" if params.get("symmetric", True) else "asymmetric"
        return f"int4 group-{params.get('group_size')} {symmetry}"
