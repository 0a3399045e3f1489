"""Behaviour shared by the static-quantization modules: the calibrated input quantizer."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _kernels as K
from .. import _ops as ops
from .._int8 import int8_qdtype


class StaticInputMixin:
    """Holds the input quantizer of a layer whose activations were calibrated: buffers
    ``input_scale`` (float32 ``[1]``) and ``input_zero_point`` (int32 ``[1]``), and the
    attribute ``activation_symmetric`` (int8 inputs with zero point 0 when True, uint8 inputs
    with a zero point when False). One scale for the whole tensor: per-tensor quantization.

    >>> layer.set_input_range(-1.0, 3.0)
    >>> layer.quantize_input(x).dtype
    torch.uint8
    """

    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    activation_symmetric: bool

    def _init_static_input(self, activation_symmetric: bool, device: torch.device | str | None) -> None:
        assert isinstance(self, nn.Module)
        self.activation_symmetric = bool(activation_symmetric)
        zero = 0 if self.activation_symmetric else 128
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32, device=device))
        self.register_buffer("input_zero_point", torch.full((1,), zero, dtype=torch.int32, device=device))

    @property
    def input_qdtype(self) -> torch.dtype:
        """torch.int8 (symmetric) or torch.uint8 (asymmetric): what inputs are quantized to."""
        return int8_qdtype(self.activation_symmetric)

    def set_input_range(self, low: float, high: float) -> None:
        """Set the input scale and zero point from a calibrated range ``[low, high]`` with the
        same ``qparams`` rule as the weights (an asymmetric range is widened to include 0).

        >>> layer.set_input_range(*stats.layers["fc1"].range)
        """
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"the input range must be finite with low <= high; got [{low}, {high}]")
        mn = torch.tensor([low], dtype=torch.float32)
        mx = torch.tensor([high], dtype=torch.float32)
        scale, zp = K.qparams(mn, mx, self.input_qdtype, symmetric=self.activation_symmetric)
        self.input_scale = scale.to(self.input_scale.device)
        self.input_zero_point = zp.to(self.input_zero_point.device)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` quantized per tensor with the calibrated scale and zero point (int8/uint8)."""
        return K.quantize(x, self.input_scale, self.input_zero_point, axis=None, qdtype=self.input_qdtype)

    def fake_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` after a quantize-dequantize round trip, in ``x``'s dtype: the values the
        quantized layer actually sees."""
        return ops.fake_quantize_per_tensor(x, self.input_scale, self.input_zero_point,
                                                             self.activation_symmetric)

    def _input_repr(self) -> str:
        qdtype = str(self.input_qdtype).removeprefix("torch.")
        return (
            f"input={qdtype} per_tensor (scale={float(self.input_scale[0]):.6g}, "
            f"zero_point={int(self.input_zero_point[0])})"
        )
