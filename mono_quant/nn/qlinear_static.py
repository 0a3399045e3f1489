"""``StaticQuantizedLinear``: INT8 weight and INT8 input, integer matmul in C."""

from __future__ import annotations

import torch
from torch import nn

from .. import _ops as ops
from ..config import QuantizationConfig
from ._input_check import check_features, check_float_input
from ._int8_weight import Int8WeightMixin, check_int8_config
from ._static_input import StaticInputMixin


class StaticQuantizedLinear(StaticInputMixin, Int8WeightMixin, nn.Module):
    """Linear layer with an INT8 weight (per output channel, as ``QuantizedLinear``) and a
    statically calibrated INT8 input quantizer (one scale and zero point for the tensor).

    Buffers: ``qweight`` int8 / uint8 ``[out, in]``, ``scale`` float32 ``[out]``,
    ``zero_point`` int32 ``[out]``, ``bias`` float ``[out]`` or None (the file layout, read by
    the kernel as it is: the one copy of the weight), plus ``input_scale`` float32 ``[1]`` and
    ``input_zero_point`` int32 ``[1]``; ``activation_symmetric`` says whether inputs are int8
    (zero point 0) or uint8 (the default, asymmetric).

    ``forward`` calls ``torch.ops.mono_quant.linear_static``: it quantizes the input with the
    calibrated parameters (values outside the calibrated range are clamped), multiplies
    integer by integer with an exact integer sum (C on the CPU, torch elsewhere), rescales in
    float32, adds the bias and returns the input's float dtype. Inference only: no gradient.

    >>> q = StaticQuantizedLinear.from_float(nn.Linear(64, 32), input_range=(-2.0, 3.5))
    >>> q(torch.randn(8, 64)).shape
    torch.Size([8, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        symmetric: bool = True,
        per_channel: bool = True,
        activation_symmetric: bool = False,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = check_features(in_features, out_features)
        self._init_int8((self.out_features, self.in_features), bias, symmetric, per_channel, device, bias_dtype)
        self._init_static_input(activation_symmetric, device)

    @classmethod
    def from_float(  # type: ignore[override]
        cls,
        linear: nn.Linear,
        config: QuantizationConfig | None = None,
        *,
        input_range: tuple[float, float],
    ) -> StaticQuantizedLinear:
        """Quantize ``linear`` (left unchanged) with ``config``'s symmetric / per_channel /
        activation_symmetric, its inputs over the calibrated ``input_range = (min, max)``.

        >>> q = StaticQuantizedLinear.from_float(fc, input_range=stats.layers["fc"].range)
        """
        config = QuantizationConfig() if config is None else config
        check_int8_config(cls.__name__, config)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear; got {type(linear).__name__}")
        weight, bias = linear.weight, linear.bias
        layer = cls(
            linear.in_features, linear.out_features, bias is not None,
            symmetric=config.symmetric,
            per_channel=config.per_channel,
            activation_symmetric=config.activation_symmetric,
            device=weight.device,
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer._load_float(weight, bias)
        layer.set_input_range(*input_range)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        return ops.linear_static(
            x, self.input_scale, self.input_zero_point, self.activation_symmetric,
            self.qweight, self.scale, self.zero_point, self.bias,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._int8_repr()}, {self._input_repr()}"
        )
