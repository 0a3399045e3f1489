"""``StaticQuantizedConv2d``: INT8 weight and statically calibrated INT8 input."""

from __future__ import annotations

import torch
from torch import nn

from ..config import QuantizationConfig
from ._int8_weight import check_int8_config
from ._input_check import check_float_input
from ._static_input import StaticInputMixin
from .qconv2d import QuantizedConv2d


class StaticQuantizedConv2d(StaticInputMixin, QuantizedConv2d):
    """2-D convolution with an INT8 weight (per output channel, as ``QuantizedConv2d``) and a
    statically calibrated INT8 input quantizer (one scale and zero point for the tensor).

    Buffers: those of ``QuantizedConv2d`` plus ``input_scale`` float32 ``[1]`` and
    ``input_zero_point`` int32 ``[1]``.

    ``forward`` runs on torch, not an integer kernel: the input goes through a quantize /
    dequantize round trip with the calibrated parameters (the C kernels on the CPU), so the
    convolution sees exactly the INT8 values an integer kernel would, then ``F.conv2d`` runs
    with the dequantized weight in the input's dtype. Results equal an integer convolution
    up to float32 rounding of the sums; the speed is that of a float convolution.

    >>> q = StaticQuantizedConv2d.from_float(nn.Conv2d(3, 16, 3), input_range=(0.0, 1.0))
    >>> q(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 16, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        symmetric: bool = True,
        per_channel: bool = True,
        activation_symmetric: bool = False,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, symmetric=symmetric, per_channel=per_channel, device=device,
                         bias_dtype=bias_dtype)
        self._init_static_input(activation_symmetric, device)

    @classmethod
    def from_float(  # type: ignore[override]
        cls,
        conv: nn.Conv2d,
        config: QuantizationConfig | None = None,
        *,
        input_range: tuple[float, float],
    ) -> StaticQuantizedConv2d:
        """Quantize ``conv`` (left unchanged) with ``config``'s symmetric / per_channel /
        activation_symmetric, its inputs over the calibrated ``input_range = (min, max)``.

        >>> q = StaticQuantizedConv2d.from_float(conv, input_range=stats.layers["conv1"].range)
        """
        config = QuantizationConfig() if config is None else config
        check_int8_config(cls.__name__, config)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_float needs an nn.Conv2d; got {type(conv).__name__}")
        weight, bias = conv.weight, conv.bias
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias is not None, conv.padding_mode,
            symmetric=config.symmetric,
            per_channel=config.per_channel,
            activation_symmetric=config.activation_symmetric,
            device=weight.device,
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer._load_float(weight, bias)
        layer.set_input_range(*input_range)
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        return super().forward(self.fake_quantize_input(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._input_repr()}"
