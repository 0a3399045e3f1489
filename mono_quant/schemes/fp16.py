"""The "fp16" scheme: floating parameters and buffers cast to float16, module types unchanged."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import _kernels as K
from .._cast_hooks import add_cast_hooks, model_float_dtype
from .._layers import dtype_name, main_tensor, own_tensors, state_kind, tensor_bytes
from ..info import LayerInfo, QuantizationInfo
from .base import Scheme

FP16_MAX = torch.finfo(torch.float16).max
_STAY_FLOAT_WARNING_LIMIT = 5


class Fp16Scheme(Scheme):
    """Store the whole model in float16, recorded layer by layer; callers see the original's dtypes.

    Every module holding floating tensors is cast in place (``whole_model``): embeddings and
    norms too, and small layers regardless of ``min_params``. Explicit user rules
    (modules_to_not_convert, skip/layer names and types) keep modules in their dtype, with a
    warning, and so do layers whose values exceed float16's range (65504) or hold NaN/Inf.
    Tied parameters stay tied. The SQNR compares the float16 tensors with the originals.

    The model computes in float16, as ``model.half()``, but keeps the original's interface,
    as torch's dynamic float16 quantization does (``_cast_hooks``): it takes floating inputs
    of any dtype (the original's, or float16) and casts them to float16 on the way in, and
    returns floating outputs in the original's dtype (the one most of its elements had). A
    layer that kept its dtype casts its inputs to that dtype and its outputs back to float16,
    so the model works whichever layers were skipped. Activations beyond float16's range
    become inf, as in ``model.half()``. ``load_quantized`` gives a loaded fp16 model the same
    behaviour (with the skeleton's dtype as the original's). In state_dict mode the result is
    the tensors only.

    >>> half_model, info = dynamic_quantize(model, "fp16")
    >>> half_model(x).dtype == model(x).dtype     # x as the original took it
    True
    """

    name = "fp16"
    whole_model = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self._cast: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(original) -> (original, cast)
        self._interface: torch.dtype | None = None  # the model's dtype before conversion

    def skip_reason(self, name: str, module: nn.Module) -> str | None:
        return _range_reason(own_tensors(module))

    def convert_module(self, name: str, module: nn.Module) -> tuple[nn.Module, LayerInfo]:
        before = own_tensors(module)
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None and tensor.is_floating_point():
                    store[key] = self._half(tensor)
        return module, self._record(name, type(module).__name__, before, own_tensors(module))

    def skip_state_reason(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
        return _range_reason(tensors)

    def convert_state(
        self, prefix: str, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], LayerInfo]:
        out = {
            key: t.detach().half() if t.is_floating_point() else t.detach().clone()
            for key, t in tensors.items()
        }
        return out, self._record(prefix, state_kind(prefix, tensors), tensors, out)

    def start_model(self, model: nn.Module) -> None:
        self._interface = model_float_dtype(model)  # in place, `original` is cast by the end

    def finish_model(self, original: nn.Module, model: nn.Module) -> None:
        interface = self._interface if self._interface is not None else model_float_dtype(original)
        add_cast_hooks(model, torch.float16, interface)

    def finish(self, info: QuantizationInfo) -> None:
        kept = [
            name or "(root)" for name, layer in info.layers.items()
            if not layer.quantized and layer.dtype in ("float32", "float64", "bfloat16")
        ]
        if kept:
            shown = ", ".join(kept[:_STAY_FLOAT_WARNING_LIMIT]) + (", ..." if len(kept) > _STAY_FLOAT_WARNING_LIMIT else "")
            info.warnings.append(
                f"{len(kept)} layer(s) keep their float dtype inside a float16 model ({shown}); "
                "they run in that dtype (their inputs and outputs are cast) and keep its size"
            )

    def _half(self, tensor: torch.Tensor) -> torch.Tensor:
        cached = self._cast.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        data = tensor.detach().to(torch.float16)
        cast = nn.Parameter(data, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else data
        self._cast[id(tensor)] = (tensor, cast)
        return cast

    def _record(self, name, module_type, before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> LayerInfo:
        keys = [k for k, t in before.items() if t.is_floating_point()]
        sqnr = None
        if self.config.compute_sqnr and keys:
            original = torch.cat([before[k].detach().reshape(-1).float() for k in keys])
            cast = torch.cat([after[k].detach().reshape(-1).float() for k in keys])
            sqnr = K.sqnr(original, cast)
        main = main_tensor(before)
        return LayerInfo(
            name=name,
            module_type=module_type,
            scheme="fp16",
            dtype="float16",
            shape=() if main is None else tuple(main.shape),
            bytes_before=tensor_bytes(before.values()),
            bytes_after=tensor_bytes(after.values()),
            sqnr_db=sqnr,
            details={"cast": keys, "original_dtype": "" if main is None else dtype_name(main.dtype)},
        )


def _range_reason(tensors: Mapping[str, torch.Tensor]) -> str | None:
    floating = {k: t for k, t in tensors.items() if t.is_floating_point()}
    if not floating:
        return "has no floating-point tensors"
    for key, tensor in floating.items():
        if tensor.numel() and float(tensor.detach().abs().max()) > FP16_MAX:
            return (
                f"'{key}' has values beyond the float16 range (|x| > {FP16_MAX:g}) that would "
                "become inf; it keeps its dtype"
            )
    return None
