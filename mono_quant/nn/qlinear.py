"""``QuantizedLinear``: an ``nn.Linear`` whose weight is stored as INT8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _kernels as K
from .. import _ops as ops
from .. import _reference as ref
from .._int8 import int8_qdtype, quantize_weight_int8
from ..config import QuantizationConfig
from ._input_check import check_features, check_float_input
from ._int8_weight import check_int8_config, int8_linear_shapes
from ._packed_weight import PackedLinearMixin, needs_autograd


class QuantizedLinear(PackedLinearMixin, nn.Module):
    """Linear layer with an INT8 weight, one scale and zero point per output feature.

    The weight is held once, in the C kernel's packed layout (the buffer ``packed``, about
    ``out * in`` bytes plus 8 per output row). ``qweight`` int8 (symmetric) or uint8
    (asymmetric) ``[out, in]``, ``scale`` float32 ``[out]`` and ``zero_point`` int32 ``[out]``
    (0 for int8; per-tensor quantization repeats its one scale over all rows) are the file
    layout: ``state_dict()`` holds them, ``load_state_dict()`` / ``set_weight()`` take them,
    and the attributes of those names are read-only copies (see ``_packed_weight``). ``bias``
    is a float buffer ``[out]`` or None.

    ``forward`` calls the operator ``torch.ops.mono_quant.linear_int8``: on the CPU the C kernel
    quantizes the input to int8 in blocks of 32 and multiplies with integer dot products (the
    result differs from float math only by that activation rounding); elsewhere (CUDA, float64,
    ``use_backend("reference")``) it dequantizes the weight and calls ``F.linear``. An input
    that needs a gradient takes the float path, so autograd flows to the input.

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
        self.in_features, self.out_features = check_features(in_features, out_features)
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        n, qdtype = self.out_features, int8_qdtype(self.symmetric)
        self._init_packed({
            "qweight": torch.zeros(n, self.in_features, dtype=qdtype, device=device),
            "scale": torch.ones(n, dtype=torch.float32, device=device),
            "zero_point": torch.full((n,), 0 if self.symmetric else 128, dtype=torch.int32, device=device),
        }, device)
        self.register_buffer("bias", torch.zeros(n, dtype=bias_dtype, device=device) if bias else None)

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
        q, scale, zp = quantize_weight_int8(linear.weight, symmetric=config.symmetric, per_channel=config.per_channel)
        return cls.from_quantized(linear, q, scale, zp, per_channel=config.per_channel)

    @classmethod
    def from_quantized(
        cls, linear: nn.Linear, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
        *, per_channel: bool = True,
    ) -> QuantizedLinear:
        """The layer replacing ``linear`` (left unchanged; its bias is copied) with the weight
        ``quantize_weight_int8`` gave for it; symmetric when ``qweight`` is int8.

        >>> q, scale, zp = quantize_weight_int8(fc.weight)
        >>> layer = QuantizedLinear.from_quantized(fc, q, scale, zp)
        """
        weight, bias = linear.weight, linear.bias
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias is not None,
            symmetric=qweight.dtype == torch.int8,
            per_channel=per_channel,
            device="meta",
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer.set_weight(qweight, scale, zero_point)
        layer.bias = None if bias is None else bias.detach().clone()
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        if needs_autograd(x):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        return ops.linear_int8(x, self.packed, self.out_features, self.in_features, self.bias)

    def uses_fast_path(self, x: torch.Tensor) -> bool:
        """True when ``forward(x)`` runs the C kernel rather than dequantize + ``F.linear``.

        >>> layer.uses_fast_path(torch.randn(2, layer.in_features, requires_grad=True))
        False
        """
        return not needs_autograd(x) and K.linear_packed_uses_c(x, self.packed)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``(qweight - zero_point) * scale`` the module computes with.

        >>> layer.dequantized_weight().shape == (layer.out_features, layer.in_features)
        True
        """
        return ops.dequantize_linear(self.packed, self.out_features, self.in_features, 0, dtype)

    # ---- the packed storage (PackedLinearMixin) -------------------------------------------
    def _packed_size(self) -> int:
        return ref.linear_int8_packed_size(self.out_features, self.in_features)

    def _canonical_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return int8_linear_shapes(self.out_features, self.in_features, self.symmetric)

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return K.pack_linear_int8(qweight, scale, zero_point)

    def _canonical_from_packed(self) -> dict[str, torch.Tensor]:
        w, scale, zero = ref.unpack_linear_int8(self.packed, self.out_features, self.in_features)
        center = 0 if self.symmetric else 128
        return {"qweight": (w + center).to(int8_qdtype(self.symmetric)), "scale": scale.clone(),
                "zero_point": zero + center}

    def extra_repr(self) -> str:
        granularity = "per_channel" if self.per_channel else "per_tensor"
        qdtype = str(int8_qdtype(self.symmetric)).removeprefix("torch.")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, qdtype={qdtype}, {granularity}"
        )
