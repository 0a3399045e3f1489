"""``StaticQuantizedLinear``: INT8 weight and INT8 input, integer matmul in C."""

from __future__ import annotations

import torch
from torch import nn

from .. import _kernels as K
from .. import _ops as ops
from .. import _reference as ref
from .._int8 import int8_qdtype, quantize_weight_int8
from ..config import QuantizationConfig
from ._input_check import check_features, check_float_input
from ._int8_weight import check_int8_config, int8_linear_shapes
from ._packed_weight import PackedLinearMixin
from ._static_input import StaticInputMixin


class StaticQuantizedLinear(StaticInputMixin, PackedLinearMixin, nn.Module):
    """Linear layer with an INT8 weight (per output channel, as ``QuantizedLinear``) and a
    statically calibrated INT8 input quantizer (one scale and zero point for the tensor).

    The weight is held once, packed (the buffer ``packed``: ``QuantizedLinear``'s layout plus
    one int64 weight sum per row, see ``csrc/linear_static.h``), so the static and the dynamic
    INT8 layers share the weight layout and its SIMD inner loop. The file layout is that of
    ``QuantizedLinear``: ``qweight`` int8 / uint8 ``[out, in]``, ``scale`` float32 ``[out]``,
    ``zero_point`` int32 ``[out]`` (what ``state_dict()`` holds and ``load_state_dict()`` /
    ``set_weight()`` take; the attributes are read-only copies), ``bias`` float ``[out]`` or
    None, plus ``input_scale`` float32 ``[1]`` and ``input_zero_point`` int32 ``[1]``;
    ``activation_symmetric`` says whether inputs are int8 (zero point 0) or uint8 (the
    default, asymmetric).

    ``forward`` calls ``torch.ops.mono_quant.linear_static_packed``: it quantizes the input
    with the calibrated parameters (values outside the calibrated range are clamped),
    multiplies integer by integer with an exact integer sum (C on the CPU, torch elsewhere),
    rescales in float32, adds the bias and returns the input's float dtype. Inference only:
    no gradient.

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
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        n, qdtype = self.out_features, int8_qdtype(self.symmetric)
        self._init_packed({
            "qweight": torch.zeros(n, self.in_features, dtype=qdtype, device=device),
            "scale": torch.ones(n, dtype=torch.float32, device=device),
            "zero_point": torch.full((n,), 0 if self.symmetric else 128, dtype=torch.int32, device=device),
        }, device)
        self.register_buffer("bias", torch.zeros(n, dtype=bias_dtype, device=device) if bias else None)
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
            device="meta",  # the weight is packed once, below, on the weight's device
            bias_dtype=weight.dtype if bias is None else bias.dtype,
        )
        q, scale, zp = quantize_weight_int8(weight, symmetric=config.symmetric, per_channel=config.per_channel)
        layer.set_weight(q, scale, zp)
        layer.bias = None if bias is None else bias.detach().clone()
        layer.input_scale = torch.ones(1, dtype=torch.float32, device=weight.device)  # both set below
        layer.input_zero_point = torch.zeros(1, dtype=torch.int32, device=weight.device)
        layer.set_input_range(*input_range)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(self, x)
        # the buffers straight from _buffers: nn.Module.__getattr__ costs ~0.3 us per buffer,
        # a tenth of a MiniLM layer's batch-1 call
        b = self._buffers
        return ops.linear_static_packed(
            x, b["input_scale"], b["input_zero_point"], self.activation_symmetric, b["packed"],
            self.out_features, self.in_features, self.symmetric, b["bias"],
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``(qweight - zero_point) * scale`` the module computes with.

        >>> layer.dequantized_weight().shape == (layer.out_features, layer.in_features)
        True
        """
        w = self.canonical_weight()
        return ops.dequantize_int8(w["qweight"], w["scale"], w["zero_point"], dtype)

    # ---- the packed storage (PackedLinearMixin) -------------------------------------------
    def _packed_size(self) -> int:
        return ref.linear_static_packed_size(self.out_features, self.in_features)

    def _canonical_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return int8_linear_shapes(self.out_features, self.in_features, self.symmetric)

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return K.pack_linear_static(qweight, scale, zero_point)

    def _canonical_from_packed(self) -> dict[str, torch.Tensor]:
        q, scale, zp = ref.unpack_linear_static(self.packed, self.out_features, self.in_features,
                                                int8_qdtype(self.symmetric))
        return {"qweight": q, "scale": scale, "zero_point": zp}

    def extra_repr(self) -> str:
        granularity = "per_channel" if self.per_channel else "per_tensor"
        qdtype = str(int8_qdtype(self.symmetric)).removeprefix("torch.")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, qdtype={qdtype}, {granularity}, {self._input_repr()}"
        )
