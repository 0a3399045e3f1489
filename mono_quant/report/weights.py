"""One quantized layer's numbers side by side, for plots: the float weight, the weight the
layer computes with, and its scales / zero points / integer range.

Works on models and on state_dicts (whatever ``validate`` takes): the layer's tensors come
from ``validate.quantized_layers``, so packed modules give their canonical ``qweight`` /
``scale`` / ``zero_point`` and nothing is reimplemented here. Nothing is changed in either
model. Weights are viewed as ``[out, K]`` (a Conv2d's ``[out, in, kh, kw]`` flattened) and
scales as ``[out, G]``: G = 1 per output channel (INT8), G = K / group_size (INT4). A
*unit* is the block of weights that share one scale and zero point: (row, group).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .._reference import INT8_RANGES
from ..state_dict import split_key
from ..validate import ModelOrState, QuantizedLayer, quantized_layers
from .quantization import layer_label

INT4_RANGE = (0, 15)  # unsigned nibbles; the zero point places 0 inside (8 when symmetric)


@dataclass(frozen=True)
class LayerWeights:
    """``original`` and ``dequantized`` float32 ``[out, K]``; ``scale`` float32 and
    ``zero_point`` int64 ``[out, G]`` with ``qmin``/``qmax`` the stored integer range, or
    all None for a layer that is only cast (fp16; ``kind`` is then "cast to float16").

    >>> w = layer_weights(model, qmodel, "fc1")
    >>> w.grid(0, 0)[:3]          # the first values row 0, group 0 can represent
    """

    name: str
    kind: str
    original: torch.Tensor
    dequantized: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    qmin: int | None
    qmax: int | None

    @property
    def groups(self) -> int:
        """G: scales per output row (1 when only cast)."""
        return 1 if self.scale is None else self.scale.shape[1]

    @property
    def group_width(self) -> int:
        """K / G: the weights of one row that share a scale."""
        return self.original.shape[1] // self.groups

    def unit(self, row: int, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The float and dequantized weights of one unit (row, group)."""
        self._check_unit(row, group)
        cols = slice(group * self.group_width, (group + 1) * self.group_width)
        return self.original[row, cols], self.dequantized[row, cols]

    def grid(self, row: int, group: int = 0) -> torch.Tensor:
        """Every float value unit (row, group) can hold: ``(q - zero_point) * scale`` for
        q in qmin..qmax, ascending."""
        if self.scale is None:
            raise ValueError(f"layer {layer_label(self.name)!r} is only {self.kind}; it has no quantization grid: "
                             "pick an int8 or int4 layer")
        self._check_unit(row, group)
        q = torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)
        return (q - float(self.zero_point[row, group])) * float(self.scale[row, group])

    def unit_errors(self) -> torch.Tensor:
        """Sum of squared errors of every unit, ``[out, G]``."""
        err = (self.original - self.dequantized).double().square()
        return err.reshape(err.shape[0], self.groups, self.group_width).sum(-1)

    def worst_unit(self) -> tuple[int, int]:
        """(row, group) with the largest squared error."""
        flat = int(torch.argmax(self.unit_errors()))
        return divmod(flat, self.groups)

    def _check_unit(self, row: int, group: int) -> None:
        rows = self.original.shape[0]
        if not (isinstance(row, int) and 0 <= row < rows):
            raise ValueError(f"channel must be an output row of layer {layer_label(self.name)!r}, 0 to {rows - 1}; "
                             f"got {row!r}")
        if not (isinstance(group, int) and 0 <= group < self.groups):
            raise ValueError(f"group must be 0 to {self.groups - 1} for layer {layer_label(self.name)!r} "
                             f"({self.groups} group(s) per row); got {group!r}")


def layer_weights(original: ModelOrState, quantized: ModelOrState, name: str) -> LayerWeights:
    """The numbers of quantized layer ``name`` (a module name, "" for the root), read from
    ``quantized`` (the result of ``dynamic_quantize``) and ``original`` (what was passed
    to it). Neither is changed.

    >>> w = layer_weights(model, qmodel, "encoder.layer.0.attention.self.query")
    >>> w.original.shape == w.dequantized.shape
    True
    """
    layer = _find(original, quantized, name)
    if layer.original is None or layer.original.is_meta:
        raise ValueError(f"the original model has no float weight for layer {layer_label(name)!r}; pass the model "
                         "(or state_dict) that was quantized")
    with torch.no_grad():
        if layer.fmt is None:  # cast: the tensors as they are, float32
            approx = torch.cat([t.detach().reshape(-1).float() for t in layer.tensors.values()])
            reference = layer.original.detach().float().reshape(-1)
            dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in layer.tensors.values()})
            return LayerWeights(name, f"cast to {'/'.join(dtypes)}", reference.reshape(1, -1).cpu(),
                                approx.reshape(1, -1).cpu(), None, None, None, None)
        deq = layer.fmt.dequantize(layer.params, layer.tensors).detach().float().cpu()
        reference = layer.original.detach().float().cpu()
        if reference.shape != deq.shape:
            raise ValueError(f"layer {layer_label(name)!r} has shape {list(deq.shape)} in the quantized model but "
                             f"{list(reference.shape)} in the original; pass the model it was made from")
        out = deq.shape[0]
        scale, zero_point, qrange = _grid_tensors(layer, out)
    return LayerWeights(name, layer.fmt.kind, reference.reshape(out, -1), deq.reshape(out, -1),
                        scale, zero_point, *qrange)


def _grid_tensors(layer: QuantizedLayer, out: int) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple]:
    tensors = layer.tensors
    if not all(k in tensors for k in ("qweight", "scale", "zero_point")):
        return None, None, (None, None)
    scale = tensors["scale"].detach().float().cpu().reshape(out, -1)
    zero_point = tensors["zero_point"].detach().to(torch.int64).cpu().reshape(out, -1)
    if layer.fmt.kind.startswith("int4"):
        qrange = INT4_RANGE
    else:
        qrange = INT8_RANGES.get(tensors["qweight"].dtype, (None, None))
    return scale, zero_point, qrange


def quantized_names(original: ModelOrState, quantized: ModelOrState) -> list[str]:
    """Names of the layers of ``quantized`` stored differently from ``original``, in order.

    >>> quantized_names(model, qmodel)[:2]
    ['encoder.layer.0.attention.self.query', 'encoder.layer.0.attention.self.key']
    """
    return [layer.name for layer in quantized_layers(original, quantized)]


def _find(original: ModelOrState, quantized: ModelOrState, name: str) -> QuantizedLayer:
    if not isinstance(name, str):
        raise TypeError(f"layer must be a layer name (str); got {type(name).__name__}")
    if isinstance(original, nn.Module) and isinstance(quantized, nn.Module):
        try:
            found = quantized_layers(original.get_submodule(name), quantized.get_submodule(name))
        except AttributeError:
            found = []
        found = [layer for layer in found if layer.name == ""]
        for layer in found:
            layer.name = name
    elif isinstance(original, Mapping) and isinstance(quantized, Mapping):
        found = quantized_layers(_layer_entries(original, name), _layer_entries(quantized, name))
    else:
        raise TypeError("original and quantized must both be nn.Modules or both be state_dicts; got "
                        f"{type(original).__name__} and {type(quantized).__name__}")
    if not found:
        names = quantized_names(original, quantized)
        shown = ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ValueError(f"no quantized layer named {name!r} in the quantized model; its quantized layers are "
                         f"{shown or 'none'}")
    return found[0]


def _layer_entries(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of layer ``name`` in a state_dict (its own keys, not its children's)."""
    return {k: v for k, v in state.items() if isinstance(k, str) and split_key(k)[0] == name}
