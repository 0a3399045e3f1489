"""``QuantizedLinear``: an ``nn.Linear`` whose weight is stored as INT8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantizationConfig
from .. import _kernels
from ._int8_weight import Int8WeightMixin, check_int8_config
from ._input_check import check_float_input
from ._packed_forward import PackedForwardMixin


class QuantizedLinear(PackedForwardMixin, Int8WeightMixin, nn.Module):
    """Linear layer with an INT8 weight, one scale and zero point per output feature.

    Buffers: ``qweight`` int8 (symmetric) or uint8 (asymmetric) ``[out, in]``, ``scale``
    float32 ``[out]``, ``zero_point`` int32 ``[out]`` (0 for int8; per-tensor quantization
    repeats its one scale over all rows), ``bias`` float ``[out]`` or None.

    ``forward`` on the CPU runs the C kernel: the weight is repacked once (an in-memory copy
    the size of ``qweight``, see ``packed_weight``), the input is quantized to int8 in blocks
    of 32 and multiplied with integer dot products; the result differs from float math only
    by that activation rounding. Elsewhere (CUDA, or when the input needs a gradient) it
    dequantizes the weight and calls ``F.linear``, so autograd flows to the input.

    >>> qlinear = QuantizedLinear.from_float(nn.Linear(64, 32))
    >>> qlinear(torch.randn(8, 64)).shape
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
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features and out_features must be positive; got {in_features} and {out_features}"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._init_int8((self.out_features, self.in_features), bias, symmetric, per_channel, device, bias_dtype)

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QuantizationConfig | None = None) -> QuantizedLinear:
        """Quantize ``linear`` (left unchanged) with ``config``'s symmetric / per_channel.

        >>> q = QuantizedLinear.from_float(fc, QuantizationConfig(symmetric=False))
        >>> q.qweight.dtype
        torch.uint8
        """
        config = QuantizationConfig() if config is None else config
        check_int8_config(cls.__name__, config)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear; got {type(linear).__name__}")
        weight = linear.weight
        bias = linear.bias
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias is not None,
            symmetric=config.symmetric,
            per_channel=config.per_channel,
            device=weight.device,
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer._load_float(weight, bias)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        if self.uses_fast_path(x):
            return self._plan()(x)
        return F.linear(x, self.dequantized_weight(x.dtype), self._bias_as(x.dtype))

    def _plan_args(self) -> tuple[torch.Tensor, int]:
        return _kernels.pack_linear_int8(self.qweight, self.scale, self.zero_point), 0

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._int8_repr()}"
        )
