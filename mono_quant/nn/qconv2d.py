"""``QuantizedConv2d``: an ``nn.Conv2d`` whose weight is stored as INT8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..config import QuantizationConfig
from ._int8_weight import Int8WeightMixin, check_int8_config
from ._input_check import check_float_input

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class QuantizedConv2d(Int8WeightMixin, nn.Module):
    """2-D convolution with an INT8 weight, one scale and zero point per output channel.

    Buffers: ``qweight`` int8 / uint8 ``[out, in // groups, kh, kw]``, ``scale`` float32
    ``[out]``, ``zero_point`` int32 ``[out]``, ``bias`` float ``[out]`` or None. Stride,
    padding (numbers or "same"/"valid"), dilation, groups and padding_mode are kept.

    Per output channel is the natural granularity: each output channel is one filter whose
    range is independent of the others, and the scale multiplies that channel's output.
    ``forward`` dequantizes the weight into the input's dtype and calls ``F.conv2d`` (after
    ``F.pad`` for non-zero padding modes), exactly as ``nn.Conv2d`` does.

    >>> qconv = QuantizedConv2d.from_float(nn.Conv2d(3, 16, 3, padding=1))
    >>> qconv(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 16, 8, 8])
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
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                f"by groups ({groups})"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}; got {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be a number, a pair, 'same' or 'valid'; got {padding!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = _reversed_padding(self.padding, self.kernel_size, self.dilation)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_int8(shape, bias, symmetric, per_channel, device, bias_dtype)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: QuantizationConfig | None = None) -> QuantizedConv2d:
        """Quantize ``conv`` (left unchanged) with ``config``'s symmetric / per_channel.

        >>> q = QuantizedConv2d.from_float(nn.Conv2d(3, 8, 3, stride=2))
        >>> q.stride
        (2, 2)
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
            device=weight.device,
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer._load_float(weight, bias)
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        weight = self.dequantized_weight(x.dtype)
        bias = self._bias_as(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, _pair(0), self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return f"{text}, bias={self.bias is not None}, {self._int8_repr()}"


def _reversed_padding(
    padding: tuple[int, int] | str, kernel_size: tuple[int, int], dilation: tuple[int, int]
) -> list[int]:
    """``F.pad`` amounts (last dimension first) for non-zero padding modes, as nn.Conv2d has."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        amounts: list[int] = []
        for d, k in zip(reversed(dilation), reversed(kernel_size)):
            total = d * (k - 1)
            amounts += [total // 2, total - total // 2]
        return amounts
    return [p for p in reversed(padding) for _ in range(2)]
