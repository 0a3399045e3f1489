"""The weight storage shared by ``QuantizedLinear`` and ``QuantizedLinearInt4``: one copy, packed.

The module's only weight tensor is ``packed`` (a uint8 buffer in the C kernel's layout,
``csrc/linear.h``), which every forward reads, so a running model holds its quantized weight
once (about its size in the file) and nothing can go stale between a write and the next call.
The canonical layout of ``docs/design.md`` (``qweight``, ``scale``, ``zero_point``) is what
files and ``state_dict()`` hold: ``state_dict()`` unpacks it, ``load_state_dict()`` and
``set_weight()`` pack it. The attributes ``qweight`` / ``scale`` / ``zero_point`` are computed
from ``packed`` on access and refuse in-place writes (``ReadOnlyTensor``); assigning one
(``layer.scale = s``) repacks. ``packed`` is a non-persistent buffer: it follows ``.to()``,
``copy.deepcopy`` and pickling, and is never saved.
"""

from __future__ import annotations

import math
import sys

import torch

from ._readonly import ReadOnlyTensor
from ._routes import NoScriptMixin

CANONICAL = ("qweight", "scale", "zero_point")


def needs_autograd(x: torch.Tensor) -> bool:
    """True when ``forward(x)`` must take the float path so that a gradient reaches ``x``.

    Not while ``torch.jit.trace`` or ``torch.onnx.export`` traces: both run with grad enabled
    by default, so every layer after one with float parameters would get an input that
    requires grad, and the trace would record the float path (a dequantized float copy of the
    weight, and a graph that differs from the no-grad one) instead of the operator: a trace is
    for inference, and records what inference runs.

    >>> needs_autograd(torch.randn(2, 8, requires_grad=True))
    True
    """
    return x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing() and not onnx_exporting()


def onnx_exporting() -> bool:
    """True while ``torch.onnx.export`` runs (never imports ``torch.onnx``: no export runs
    without it)."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _canonical_property(name: str) -> property:
    def get(self: PackedLinearMixin) -> ReadOnlyTensor:
        return self._read_only(name)

    def set(self: PackedLinearMixin, value: torch.Tensor) -> None:
        self._assign(name, value)

    return property(get, set, doc=f"``{name}`` in the file layout, computed from ``packed`` (read-only; "
                                  f"assigning a tensor repacks).")


class PackedLinearMixin(NoScriptMixin):
    """Storage and state_dict plumbing of a Linear layer whose weight is packed.

    A subclass sets ``in_features`` / ``out_features`` and implements ``_canonical_from_packed``
    (canonical tensors of ``self.packed``), ``_pack`` (canonical -> packed, on their device),
    ``_canonical_shapes`` (name -> shape and dtype: what ``_check_canonical`` holds tensors to)
    and ``_packed_size``.

    >>> layer.set_weight(qweight, scale, zero_point)
    >>> layer.state_dict().keys()
    odict_keys(['qweight', 'scale', 'zero_point', 'bias'])
    """

    in_features: int
    out_features: int
    packed: torch.Tensor
    qweight = _canonical_property("qweight")
    scale = _canonical_property("scale")
    zero_point = _canonical_property("zero_point")

    # ---- what each module provides ------------------------------------------------------
    def _canonical_from_packed(self) -> dict[str, torch.Tensor]:  # pragma: no cover (abstract)
        raise NotImplementedError

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _check_canonical(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` checked against ``_canonical_shapes()`` and converted to those dtypes."""
        return check_canonical_tensors(type(self).__name__, tensors, self._canonical_shapes())

    def _packed_size(self) -> int:  # pragma: no cover (abstract)
        raise NotImplementedError

    def _canonical_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:  # pragma: no cover
        raise NotImplementedError

    # ---- storage --------------------------------------------------------------------------
    def _init_packed(self, defaults: dict[str, torch.Tensor], device: torch.device | str | None) -> None:
        """Register ``packed`` holding ``defaults`` (empty on the meta device)."""
        assert isinstance(self, torch.nn.Module)
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8, device=device), persistent=False)
        self._store(self._check_canonical(defaults))

    def _store(self, canonical: dict[str, torch.Tensor]) -> None:
        q = canonical["qweight"]
        if q.device.type == "meta":
            packed = torch.empty(self._packed_size(), dtype=torch.uint8, device="meta")
        else:
            packed = self._pack(q, canonical["scale"], canonical["zero_point"])
        self._buffers["packed"] = packed  # type: ignore[attr-defined]

    def set_weight(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Replace the weight with canonical tensors (checked, then packed on their device;
        the module's ``packed`` buffer moves there too).

        >>> layer.set_weight(other.qweight, other.scale * 2, other.zero_point)
        """
        self._store(self._check_canonical({"qweight": qweight, "scale": scale, "zero_point": zero_point}))

    def canonical_weight(self) -> dict[str, torch.Tensor]:
        """``{"qweight", "scale", "zero_point"}`` in the file layout, computed from ``packed``
        (plain tensors, owned by the caller; what ``state_dict()`` saves).

        >>> layer.canonical_weight()["scale"].dtype
        """
        if self.packed.device.type == "meta":
            return {name: torch.empty(shape, dtype=dtype, device="meta")
                    for name, (shape, dtype) in self._canonical_shapes().items()}
        return self._canonical_from_packed()

    def _read_only(self, name: str) -> ReadOnlyTensor:
        cls = type(self).__name__
        message = (f"{cls}.{name} is computed from the packed weight (the only copy the module holds), "
                   f"so an in-place write to it would change nothing; assign a new tensor "
                   f"(layer.{name} = t), call layer.set_weight(qweight, scale, zero_point), or "
                   f"load_state_dict()")
        return ReadOnlyTensor.wrap(self.canonical_weight()[name], message)

    def _assign(self, name: str, value: torch.Tensor) -> None:
        tensors = self.canonical_weight()
        tensors[name] = value
        self.set_weight(**tensors)

    def packed_weight(self) -> torch.Tensor:
        """The packed weight the kernels read (the module's ``packed`` buffer itself).

        >>> layer.packed_weight().dtype
        torch.uint8
        """
        return self.packed

    def packed_bytes(self) -> int:
        """Bytes of the weight as the module holds it in memory (``packed``).

        >>> layer.packed_bytes() <= 1.1 * layer.in_features * layer.out_features   # INT8
        True
        """
        return self.packed.numel()

    def storage_bytes(self) -> int:
        """Bytes of the layer in the file layout (``qweight``, ``scale``, ``zero_point``,
        ``bias``): what a file holds for it, for size reports.

        >>> QuantizedLinearInt4.from_float(nn.Linear(128, 8)).storage_bytes()   # 512 + 16 + 8 + 32
        568
        """
        canonical = sum(math.prod(shape) * dtype.itemsize for shape, dtype in self._canonical_shapes().values())
        bias = getattr(self, "bias", None)
        return canonical + (0 if bias is None else bias.numel() * bias.element_size())

    # ---- state_dict: the canonical layout -----------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # The ONNX exporter reads the state_dict (several times) only to find graph inputs; the
        # graph uses ``packed``, so unpacking the canonical tensors there would be wasted time.
        if not onnx_exporting():
            for name, tensor in self.canonical_weight().items():
                destination[prefix + name] = tensor
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]  (bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # noqa: ANN001 (torch hook)
        keys = {name: prefix + name for name in CANONICAL}
        given = {name: state_dict[key] for name, key in keys.items() if key in state_dict}
        if len(given) == len(keys):
            self._load_canonical(given, prefix, bool(local_metadata.get("assign_to_params_buffers")), error_msgs)
        elif strict:
            missing_keys.extend(key for name, key in keys.items() if name not in given)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,  # type: ignore[misc]
                                      missing_keys, unexpected_keys, error_msgs)
        for key in keys.values():
            if key in unexpected_keys:
                unexpected_keys.remove(key)

    def _load_canonical(self, given: dict[str, torch.Tensor], prefix: str, assign: bool, error_msgs: list) -> None:
        device = self.packed.device
        if device.type == "meta" and not assign:
            return  # as torch does for meta tensors: loading without assign=True changes nothing
        try:
            tensors = self._check_canonical({name: t.detach() for name, t in given.items()})
            if not assign:
                tensors = {name: t.to(device) for name, t in tensors.items()}
            self._store(tensors)
        except (TypeError, ValueError) as exc:
            error_msgs.append(f"{prefix.rstrip('.')}: {exc}" if prefix else str(exc))


def check_canonical_tensors(cls_name: str, tensors: dict[str, torch.Tensor],
                            expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """``tensors`` checked against ``expected`` (name -> shape, dtype) and converted to those
    dtypes: ``qweight`` must have its dtype exactly (int8 and uint8 mean different things);
    scales take any float dtype and zero points any integer dtype, as ``load_state_dict``
    converts them. Raises TypeError / ValueError naming the tensor."""
    out = {}
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{cls_name}.{name} must be a tensor; got {type(t).__name__}")
        if isinstance(t, ReadOnlyTensor):
            t = t.as_subclass(torch.Tensor)
        ok_kind = (t.dtype == dtype if name == "qweight" else
                   t.is_floating_point() if dtype.is_floating_point else
                   not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool)
        if not ok_kind:
            hint = (f"; build the module with symmetric={t.dtype == torch.int8}"
                    if name == "qweight" and {t.dtype, dtype} == {torch.int8, torch.uint8} else "")
            raise TypeError(f"{cls_name}.{name} must be {str(dtype).removeprefix('torch.')}; got "
                            f"{str(t.dtype).removeprefix('torch.')}{hint}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{cls_name}.{name} must have shape {list(shape)}; got {list(t.shape)}")
        out[name] = t.to(dtype)
    return out
