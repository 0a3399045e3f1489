"""``QuantizedLinearInt4``: an ``nn.Linear`` whose weight is stored as group-wise INT4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _kernels
from .. import _ops as ops
from .. import _reference as ref
from ._input_check import check_features, check_float_input
from ._packed_weight import PackedLinearMixin, needs_autograd


class QuantizedLinearInt4(PackedLinearMixin, nn.Module):
    """Linear layer with an INT4 weight, one fp16 scale and zero point per group of
    ``group_size`` consecutive input features (format in ``docs/design.md``).

    The weight is held once, in the C kernel's packed layout (the buffer ``packed``: half a
    byte per weight plus 64 bytes per 16 rows x group). The file layout, which ``state_dict()``
    holds and ``load_state_dict()`` / ``set_weight()`` take: ``qweight`` uint8 ``[out, in // 2]``
    (two weights per byte, even input index in the low nibble), ``scale`` float16
    ``[out, in // group_size]``, ``zero_point`` uint8 ``[out, in // group_size]`` (8 when
    symmetric); the attributes of those names are read-only copies (see ``_packed_weight``).
    ``bias`` is a float buffer ``[out]`` or None.

    ``forward`` calls ``torch.ops.mono_quant.linear_int4``: on the CPU the C kernel with the
    input quantized to int8 in blocks of 32 (the result differs from float math only by that
    activation rounding); elsewhere (CUDA, float64, the reference backend) it dequantizes the
    weight and calls ``F.linear``. An input that needs a gradient takes the float path.

    Casting the module (``.float()``, ``.half()``, ``.bfloat16()``) casts the bias only.

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
        self.in_features, self.out_features = check_features(in_features, out_features)
        _kernels.check_int4_group_size(group_size)
        _kernels.check_int4_divisible(in_features, group_size)
        self.group_size = int(group_size)
        self.symmetric = bool(symmetric)
        groups = self.in_features // self.group_size
        zero = 8 if self.symmetric else 0
        self._init_packed({
            "qweight": torch.full((out_features, in_features // 2), zero * 0x11, dtype=torch.uint8, device=device),
            "scale": torch.ones(out_features, groups, dtype=torch.float16, device=device),
            "zero_point": torch.full((out_features, groups), zero, dtype=torch.uint8, device=device),
        }, device)
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
        quantized = _kernels.int4_quantize(linear.weight, group_size, symmetric, scale_method)
        return cls.from_quantized(linear, *quantized, group_size=group_size, symmetric=symmetric)

    @classmethod
    def from_quantized(
        cls, linear: nn.Linear, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
        *, group_size: int, symmetric: bool,
    ) -> QuantizedLinearInt4:
        """The layer replacing ``linear`` (left unchanged; its bias is copied) with the weight
        ``int4_quantize`` gave for it.

        >>> layer = QuantizedLinearInt4.from_quantized(fc, *int4_quantize(fc.weight, 64), group_size=64, symmetric=True)
        """
        weight, bias = linear.weight, linear.bias
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias is not None,
            group_size=group_size,
            symmetric=symmetric,
            device="meta",
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        layer.set_weight(qweight, scale, zero_point)
        layer.bias = None if bias is None else bias.detach().clone()
        layer.train(linear.training)
        return layer

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[out, in]`` the module computes with.

        >>> layer.dequantized_weight(torch.float16).shape == (layer.out_features, layer.in_features)
        True
        """
        return ops.dequantize_linear(self.packed, self.out_features, self.in_features,
                                                      self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        if needs_autograd(x):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        return ops.linear_int4(x, self.packed, self.out_features, self.in_features,
                                                self.group_size, self.bias)

    def uses_fast_path(self, x: torch.Tensor) -> bool:
        """True when ``forward(x)`` runs the C kernel rather than dequantize + ``F.linear``.

        >>> layer.uses_fast_path(torch.randn(2, layer.in_features, requires_grad=True))
        False
        """
        return not needs_autograd(x) and _kernels.linear_packed_uses_c(x, self.packed)

    # ---- the packed storage (PackedLinearMixin) -------------------------------------------
    def _packed_size(self) -> int:
        return ref.linear_int4_packed_size(self.out_features, self.in_features, self.group_size)

    def _canonical_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        n, k, groups = self.out_features, self.in_features, self.in_features // self.group_size
        return {"qweight": ((n, k // 2), torch.uint8), "scale": ((n, groups), torch.float16),
                "zero_point": ((n, groups), torch.uint8)}

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return _kernels.pack_linear_int4(qweight, scale, zero_point, self.group_size)

    def _canonical_from_packed(self) -> dict[str, torch.Tensor]:
        u, scale, zp = ref.unpack_linear_int4(self.packed, self.out_features, self.in_features, self.group_size)
        return {"qweight": _kernels.int4_pack(u), "scale": scale.contiguous(), "zero_point": zp.contiguous()}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, symmetric={self.symmetric}"
        )
