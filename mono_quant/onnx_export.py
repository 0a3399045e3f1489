"""ONNX export of quantized models: ``export_onnx`` and the exporter's translations.

    >>> import mono_quant
    >>> qmodel, _ = mono_quant.dynamic_quantize(model, "int8")
    >>> mono_quant.export_onnx(qmodel, torch.randn(1, 64), "model.onnx")

The graphs (``docs/onnx.md``) are standard ONNX that ONNX Runtime runs: int8 / uint8 weight
initializers with per-channel ``DequantizeLinear`` (INT8), ``QuantizeLinear`` /
``DequantizeLinear`` pairs with the calibrated parameters on the activations (static INT8) and
``com.microsoft::MatMulNBits`` (INT4). They come from the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), through a translation registered for each
``mono_quant::*`` operator; ``dynamo=True`` cannot read a packed weight and refuses (``_ops``).

Importing this file imports neither ``torch.onnx`` (about 0.1 s) nor ``onnx``: the package
import only installs ``install_registration_hook``, which registers the translations when
``torch.onnx`` is first imported, so plain ``torch.onnx.export(q_model, args, path,
dynamo=False)`` works after ``import mono_quant`` at no import-time cost.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

DEFAULT_OPSET = 17
MAX_OPSET = 20  # the TorchScript-based exporter's last opset
SIZE_TOLERANCE = 0.10  # the file may exceed the quantized tensors' bytes by this much
_REGISTER_FROM_OPSET = 7  # below 13 the translations raise a clear error themselves
INT8_ACTIVATIONS = ("float", "dynamic")  # how a dynamic INT8 Linear's activations are written
_registered = False

__all__ = ["export_onnx", "register_onnx_symbolics"]


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


def register_onnx_symbolics() -> None:
    """Register the ONNX translations of every ``mono_quant::*`` operator with the
    TorchScript-based exporter (once; ``import mono_quant`` arranges it already).

    >>> register_onnx_symbolics()
    >>> torch.onnx.export(qmodel, (x,), "model.onnx", dynamo=False)
    """
    global _registered
    if _registered:
        return
    import torch.onnx  # noqa: F401  (a first import runs the hook, which calls this function)

    if _registered:
        return
    from . import _onnx_symbolic as S

    for name, fn in S.SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(f"{S.NAMESPACE}::{name}", fn, _REGISTER_FROM_OPSET)
    _registered = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds nothing itself; when ``torch.onnx`` is imported, lets the usual loader run it and
    then registers the translations (a post-import hook, removed after its one use)."""

    def __init__(self) -> None:
        self._loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname != "torch.onnx" or self._loader is not None:
            return None
        self._remove()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):  # noqa: ANN001
        return self._loader.create_module(spec)  # type: ignore[union-attr]

    def exec_module(self, module) -> None:  # noqa: ANN001
        spec = module.__spec__
        spec.loader = self._loader
        self._loader.exec_module(module)  # type: ignore[union-attr]
        try:
            register_onnx_symbolics()
        except Exception as exc:  # never break `import torch.onnx`; export_onnx retries and raises
            warnings.warn(f"mono_quant could not register its ONNX translations: {exc}", RuntimeWarning,
                          stacklevel=2)

    def _remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install_registration_hook() -> None:
    """Register now when ``torch.onnx`` is loaded already, else as soon as it is imported.

    Called by ``import mono_quant``; importing ``torch.onnx`` eagerly would add about 0.1 s
    to every import of the package (its symbolic tables), for a feature few sessions use.
    """
    if "torch.onnx" in sys.modules:
        register_onnx_symbolics()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


# ---------------------------------------------------------------------------------------------
# export_onnx
# ---------------------------------------------------------------------------------------------


class _FlatModel(nn.Module):
    """Calls ``model`` with the exported tensors (positional, or as keywords by ``keywords``)
    and returns its outputs as a flat tuple of tensors, so each becomes one named graph output."""

    def __init__(self, model: nn.Module, keywords: Sequence[str] | None) -> None:
        super().__init__()
        self.model = model
        self.keywords = None if keywords is None else tuple(keywords)
        self.training = False  # the exporter restores this flag on the whole tree afterwards

    def call(self, tensors: Sequence[torch.Tensor]):
        """The model's own output for ``tensors``."""
        return self.model(**dict(zip(self.keywords, tensors))) if self.keywords else self.model(*tensors)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor for _, tensor in _flatten_outputs(self.call(tensors)))


def _flatten_outputs(out, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in ``out`` (a tensor, tuple / list, or mapping such
    as a transformers ModelOutput, whose keys name its tensors); None entries are left out."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        items = [(str(key), value) for key, value in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"{prefix}_{i}", value) for i, value in enumerate(out)]
    elif out is None:
        return []
    else:
        raise TypeError(f"export_onnx: the model returned a {type(out).__name__}; ONNX outputs must be "
                        "tensors, or tuples / lists / dicts of tensors")
    flat = []
    for name, value in items:
        flat += _flatten_outputs(value, name)
    return flat


def _example_tensors(example_inputs) -> tuple[tuple[torch.Tensor, ...], list[str] | None]:
    """The example inputs as a tuple of tensors, plus their keyword names for a mapping."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        keywords, values = [str(k) for k in example_inputs], tuple(example_inputs.values())
    elif isinstance(example_inputs, (tuple, list)):
        keywords, values = None, tuple(example_inputs)
    else:
        raise TypeError("example_inputs must be a tensor, a tuple / list of tensors (positional arguments) "
                        f"or a dict of tensors (keyword arguments); got {type(example_inputs).__name__}")
    for i, value in enumerate(values):
        if not isinstance(value, torch.Tensor):
            where = keywords[i] if keywords else f"example_inputs[{i}]"
            raise TypeError(f"export_onnx: {where} must be a tensor; got {type(value).__name__} (the graph "
                            "inputs are tensors; bind other arguments with functools.partial or a wrapper)")
    return values, keywords


def default_dynamic_axes(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> dict[str, dict[int, str]]:
    """Dim 0 of every tensor is ``batch``; dim 1 is ``sequence`` in integer tensors of rank 2
    (token ids, masks) and float tensors of rank 3 (``[batch, sequence, features]``).

    >>> default_dynamic_axes(["input_ids"], [torch.zeros(2, 7, dtype=torch.long)])
    {'input_ids': {0: 'batch', 1: 'sequence'}}
    """
    axes = {}
    for name, t in zip(names, tensors):
        if t.dim() == 0:
            continue
        dims = {0: "batch"}
        if (t.dim() == 2 and not t.is_floating_point()) or (t.dim() == 3 and t.is_floating_point()):
            dims[1] = "sequence"
        axes[name] = dims
    return axes


def _check_args(model, opset: int, int8_activations: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs an nn.Module; got {type(model).__name__}")
    if not 13 <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between 13 (per-channel DequantizeLinear) and {MAX_OPSET} (the last "
                         f"opset of torch's TorchScript-based exporter); got {opset}")
    if int8_activations not in INT8_ACTIVATIONS:
        raise ValueError(f"int8_activations must be one of {', '.join(map(repr, INT8_ACTIVATIONS))}; "
                         f"got {int8_activations!r}")


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    int8_activations: str = "float",
) -> Path:
    """Write ``model`` (quantized by mono_quant, or partly, or not at all) as an ONNX file that
    ONNX Runtime runs, with the weights in their quantized dtypes (graphs: ``docs/onnx.md``).

    ``example_inputs``: a tensor, a tuple of tensors (positional arguments) or a dict of
    tensors (keyword arguments, e.g. a tokenizer's output; the keys name the graph inputs).
    Names default to the dict keys, else ``input`` / ``input_<i>``; outputs to the keys of a
    returned dict (a transformers ModelOutput gives ``last_hidden_state``, ...), else
    ``output`` / ``output_<i>``. ``dynamic_axes`` defaults to ``default_dynamic_axes``: the
    batch dimension everywhere and the sequence dimension of token inputs and ``[batch,
    sequence, features]`` tensors. ``int8_activations`` for dynamic INT8 Linear layers:
    ``"float"`` (default: weight-only QDQ, matches mono_quant within 1e-2) or ``"dynamic"``
    (DynamicQuantizeLinear on the activations, which ORT runs about 2x faster at batch 12 with
    per-tensor uint8 activations: lower accuracy, see docs/onnx.md). Checks that the file holds
    the quantized bytes (at most 10% over the model's tensors), else raises and removes it.
    The model is left as it was (training flags included). Returns ``Path(path)``.

    >>> qmodel, _ = mono_quant.dynamic_quantize(model, "int4")
    >>> export_onnx(qmodel, dict(tokenizer(["hello"], return_tensors="pt")), "model.onnx")
    """
    _check_args(model, opset, int8_activations)
    tensors, keywords = _example_tensors(example_inputs)
    register_onnx_symbolics()
    from . import _onnx_symbolic as S

    flat = _FlatModel(model, keywords)
    training = {module: module.training for module in model.modules()}
    try:
        with torch.no_grad():
            model.eval()  # as the exporter traces it; every flag is put back below
            outputs = _flatten_outputs(flat.call(tensors))
            in_names = list(input_names) if input_names is not None else (
                keywords or (["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]))
            out_names = list(output_names) if output_names is not None else [name for name, _ in outputs]
            axes = dict(dynamic_axes) if dynamic_axes is not None else default_dynamic_axes(
                in_names + out_names, list(tensors) + [t for _, t in outputs])
            token = S.int8_activations.set(int8_activations)
            try:
                with warnings.catch_warnings():
                    # We chose the TorchScript exporter on purpose: the dynamo one cannot read packed weights.
                    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                            category=DeprecationWarning)
                    torch.onnx.export(flat, tensors, os.fspath(path), dynamo=False, opset_version=opset,
                                      input_names=in_names, output_names=out_names, dynamic_axes=axes,
                                      do_constant_folding=True)
            finally:
                S.int8_activations.reset(token)
    finally:
        for module, mode in training.items():
            module.training = mode
    check_onnx_size(path, model)
    return Path(path)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as ``save_quantized`` stores them (the state_dict: packed
    layers in their canonical layout, tied tensors once), computed without unpacking.

    >>> quantized_bytes(qmodel) <= sum(p.numel() * 4 for p in model.parameters())
    True
    """
    from .nn._packed_weight import PackedLinearMixin

    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, PackedLinearMixin):
            total += module.storage_bytes()  # canonical tensors and bias
            continue
        persistent = [t for name, t in module._buffers.items() if name not in module._non_persistent_buffers_set]
        for tensor in [*module._parameters.values(), *persistent]:
            if tensor is None or not tensor.numel():
                continue
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel(), tensor.dtype)
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def check_onnx_size(path: str | os.PathLike[str], model: nn.Module) -> None:
    """Raise (and remove the file) when the ONNX file at ``path`` is more than 10% larger than
    the model's tensors: a float copy of quantized weights would be 4x (INT8) or 8x (INT4)."""
    size, expected = os.path.getsize(path), quantized_bytes(model)
    if size <= (1 + SIZE_TOLERANCE) * expected + 64 * 1024:  # + room for the graph of a tiny model
        return
    biggest = _largest_float_tensors(path)
    os.remove(path)
    raise RuntimeError(
        f"export_onnx: {os.fspath(path)} would be {size / 1e6:.2f} MB but the model's tensors take "
        f"{expected / 1e6:.2f} MB: the graph holds float copies of quantized weights{biggest} (file "
        "removed). Please report this with your torch / onnx versions; the exported graph is in "
        "docs/onnx.md."
    )


def _largest_float_tensors(path: str | os.PathLike[str]) -> str:
    try:
        import onnx
    except ImportError:
        return ""
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                         if a.name == "value"]
    floats = [t for t in tensors if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                    onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)]
    floats.sort(key=lambda t: -int(torch.Size(t.dims).numel()))
    return " (largest float tensors: " + ", ".join(f"{t.name or '?'} {list(t.dims)}" for t in floats[:5]) + ")"
