"""``QuantizedLinearInt4``: an ``nn.Linear`` whose weight is stored as group-wise INT4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _kernels
from ._input_check import check_float_input
from ._packed_forward import PackedForwardMixin


class QuantizedLinearInt4(PackedForwardMixin, nn.Module):
    """Linear layer with an INT4 weight, one fp16 scale and zero point per group of
    ``group_size`` consecutive input features (format in ``docs/design.md``).

    Buffers: ``qweight`` uint8 ``[out, in // 2]`` (two weights per byte, even input index in
    the low nibble), ``scale`` float16 ``[out, in // group_size]``, ``zero_point`` uint8
    ``[out, in // group_size]`` (8 when symmetric), ``bias`` float ``[out]`` or None.

    ``forward`` on the CPU runs the C kernel on a repacked in-memory copy of the weight
    (about the size of ``qweight`` plus scales, see ``packed_weight``) with the input
    quantized to int8 in blocks of 32; the result differs from float math only by that
    activation rounding. Elsewhere (CUDA, or when the input needs a gradient) it dequantizes
    the weight and calls ``F.linear``, so autograd flows to the input.

    Casting the module (``.float()``, ``.half()``, ``.bfloat16()``) casts the bias only: the
    scales stay float16, as the format stores them.

    >>> qlinear = QuantizedLinearInt4.from_float(nn.Linear(256, 64), group_size=128)
    >>> qlinear(torch.randn(8, 256)).shape
    torch.Size([8, 64])
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        group_size: int = 128,
        symmetric: bool = True,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features and out_features must be positive; got {in_features} and {out_features}"
            )
        _kernels.check_int4_group_size(group_size)
        _kernels.check_int4_divisible(in_features, group_size)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.group_size = int(group_size)
        self.symmetric = bool(symmetric)
        groups = self.in_features // self.group_size
        zero = 8 if self.symmetric else 0
        self.register_buffer(
            "qweight", torch.full((out_features, in_features // 2), zero * 0x11, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer(
            "zero_point", torch.full((out_features, groups), zero, dtype=torch.uint8, device=device)
        )
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @staticmethod
    def supports(linear: nn.Module, group_size: int = 128) -> str | None:
        """None when ``linear`` can be stored as INT4 with ``group_size``, else the reason why
        not (the caller keeps such a layer as INT8 per channel, or float, and reports it).

        >>> QuantizedLinearInt4.supports(nn.Linear(96, 8), group_size=128)
        'in_features (96) is not a multiple of group_size (128); use group_size=32 (divides 96) or quantize this layer as INT8'
        """
        _kernels.check_int4_group_size(group_size)
        if not isinstance(linear, nn.Linear):
            return f"INT4 stores nn.Linear weights only; got {type(linear).__name__}"
        if not linear.weight.is_floating_point():
            return f"the weight is {linear.weight.dtype}, not a floating-point tensor"
        k = linear.in_features
        if k % group_size:
            return (f"in_features ({k}) is not a multiple of group_size ({group_size}); "
                    f"{_kernels.int4_group_size_hint(k)}")
        return None

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        group_size: int = 128,
        symmetric: bool = True,
        scale_method: str = _kernels.INT4_DEFAULT_SCALE_METHOD,
    ) -> QuantizedLinearInt4:
        """Quantize ``linear`` (left unchanged) group-wise along its input features.

        >>> q = QuantizedLinearInt4.from_float(fc, group_size=64, scale_method="absmax")
        >>> q.scale.shape == (fc.out_features, fc.in_features // 64)
        True
        """
        reason = cls.supports(linear, group_size)
        if reason is not None:
            raise ValueError(f"cannot store this layer as INT4: {reason}")
        weight, bias = linear.weight, linear.bias
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias is not None,
            group_size=group_size,
            symmetric=symmetric,
            device=weight.device,
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer.qweight, layer.scale, layer.zero_point = _kernels.int4_quantize(
            weight, group_size, symmetric, scale_method
        )
        if bias is not None:
            layer.bias = bias.detach().clone()
        layer.train(linear.training)
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[out, in]`` the module computes with.

        >>> layer.dequantized_weight(torch.float16).shape == (layer.out_features, layer.in_features)
        True
        """
        return _kernels.int4_dequantize(self.qweight, self.scale, self.zero_point, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        if self.uses_fast_path(x):
            return self._plan()(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _plan_args(self) -> tuple[torch.Tensor, int]:
        packed = _kernels.pack_linear_int4(self.qweight, self.scale, self.zero_point, self.group_size)
        return packed, self.group_size

    def storage_bytes(self) -> int:
        """Bytes held by ``qweight``, ``scale``, ``zero_point`` and ``bias`` (for size reports).

        >>> QuantizedLinearInt4.from_float(nn.Linear(128, 8)).storage_bytes()   # 512 + 16 + 8 + 32
        568
        """
        tensors = (self.qweight, self.scale, self.zero_point, self.bias)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, symmetric={self.symmetric}"
        )

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (torch hook)
        # Module-wide dtype casts (.float(), .bfloat16()) would re-round the fp16 scales;
        # keep their dtype and follow only the device.
        scale = self.scale
        super()._apply(fn, recurse)
        if self.scale.dtype != torch.float16:
            self.scale = scale.to(device=self.scale.device)
        return self
