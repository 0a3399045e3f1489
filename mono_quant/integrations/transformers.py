"""mono_quant inside Hugging Face transformers (>= 5): ``save_pretrained`` / ``from_pretrained``.

Importing this module registers the quantization method "mono_quant" with transformers (a
``QuantizationConfigMixin`` and an ``HfQuantizer``, through ``register_quantization_config``
and ``register_quantizer``). Import it before ``from_pretrained`` of a mono_quant checkpoint:
transformers skips quantization methods it does not know, with only a logged warning.

    from mono_quant.integrations.transformers import MonoQuantConfig

    q_model, info = mono_quant.dynamic_quantize(model, "int4")   # a transformers model
    q_model.save_pretrained("out")              # config.json gets a "quantization_config"
    again = AutoModel.from_pretrained("out")    # quantized modules, built from the files
    q = AutoModel.from_pretrained(fp32_dir, quantization_config=MonoQuantConfig("int8"))  # quantize on load

Loading a quantized checkpoint puts a placeholder module (``_FileSlot``) where each quantized
layer goes, holding meta-device buffers named like the checkpoint's tensors, so transformers'
own loader (key renaming, base-model prefixes, shards, devices) fills them with the file's
integer tensors; no float weight is allocated for those layers. After loading, every
placeholder is checked (each tensor loaded, dtypes, shapes, value ranges: a
``CorruptFileError`` otherwise) and replaced by its quantized module. Quantizing while loading
receives each selected Linear's float weight as it is read, converts it with the same scheme
code and selection rules as ``dynamic_quantize`` (so the model equals
``dynamic_quantize(AutoModel.from_pretrained(fp32_dir), ...)``), and drops the float weight.
The placeholders exist because transformers re-creates non-persistent buffers of the model
after loading, which would overwrite a quantized module's packed weight.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

try:
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers import HfQuantizer
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer,
    )
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as _exc:  # transformers 4.x has another quantizer API
    raise ImportError(
        "mono_quant.integrations.transformers needs transformers >= 5.0 "
        f"({type(_exc).__name__}: {_exc}); pip install 'mono_quant[transformers]', or save with "
        "mono_quant.save_quantized / load with load_quantized instead"
    ) from _exc

from .._file_metadata import LayerEntry
from .._layer_schemes import LayerSchemes
from .._layers import own_tensors, skipped_layer
from .._skeleton import as_layer_of
from ..config import QuantizationConfig
from ..errors import CorruptFileError
from ..info import QuantizationInfo
from ..selection import module_skip_reason, parameter_owners, values_reason
from ._hf_config import (
    FORMAT_VERSION, LAYOUTS, QUANT_METHOD, config_dict, layers_of_model, parse_layers, split_config_dict,
)

__all__ = ["MonoQuantConfig", "MonoQuantHfQuantizer", "attach"]


class MonoQuantConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a mono_quant model: ``dtype`` and the options of
    ``mono_quant.QuantizationConfig`` (validated the same way), plus, for a quantized
    checkpoint, the record of each quantized layer. Pass it to ``from_pretrained`` to quantize
    a float checkpoint while loading.

    >>> model = AutoModelForCausalLM.from_pretrained(path, quantization_config=MonoQuantConfig(
    ...     "int4", group_size=64, layer_config={"lm_head": "int8"}))
    """

    def __init__(
        self,
        dtype: str | torch.dtype = "int8",
        *,
        layers: dict[str, Any] | None = None,
        layout: str = "module",
        quant_method: str = QUANT_METHOD,
        format_version: int = FORMAT_VERSION,
        mono_quant_version: str | None = None,
        **options: Any,
    ) -> None:
        if quant_method != QUANT_METHOD:
            raise ValueError(f"MonoQuantConfig is for quant_method {QUANT_METHOD!r}; got {quant_method!r}")
        if format_version != FORMAT_VERSION:
            raise ValueError(f"quantization_config format_version {format_version!r} is not supported (this "
                             f"mono_quant reads version {FORMAT_VERSION}); upgrade mono_quant")
        if layout not in LAYOUTS:
            raise ValueError(f"quantization_config layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        self.quant_method = QUANT_METHOD
        self.config = QuantizationConfig(dtype=dtype, **options)
        self.layout = layout
        self.mono_quant_version = mono_quant_version
        self.layers: dict[str, LayerEntry] = parse_layers(layers or {}, "quantization_config in config.json")

    @classmethod
    def from_quantization_config(cls, config: QuantizationConfig, layers: dict[str, LayerEntry] | None = None,
                                 layout: str = "module") -> MonoQuantConfig:
        """The transformers config of a mono_quant ``QuantizationConfig`` (``filter_fn`` kept
        for quantizing on load, not written to config.json)."""
        out = cls.__new__(cls)
        out.quant_method, out.config, out.layout, out.mono_quant_version = QUANT_METHOD, config, layout, None
        out.layers = dict(layers or {})
        return out

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self.config, self.layers, self.layout)

    def __iter__(self):
        yield from self.to_dict().items()

    @property
    def dtype(self) -> str:
        return self.config.dtype

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        reserved, options = split_config_dict(config_dict)
        config = cls(**reserved, **options)
        return (config, kwargs) if return_unused_kwargs else config


class MonoQuantHfQuantizer(HfQuantizer):
    """transformers' side of mono_quant (see the module docstring); made by transformers from
    a ``MonoQuantConfig``, never by users. ``info`` is the report of a quantize-on-load run."""

    requires_calibration = False

    def __init__(self, quantization_config: MonoQuantConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.info = QuantizationInfo(config=quantization_config.config)
        self._schemes = LayerSchemes(quantization_config.config)
        self._selected: dict[str, Any] = {}  # layer -> scheme, when quantizing while loading

    # ---- checks and set-up -------------------------------------------------------------------
    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        if self.pre_quantized and not self.quantization_config.layers:
            raise ValueError("config.json's mono_quant quantization_config lists no quantized layers; the checkpoint "
                             "was not written by mono_quant, or config.json was edited")
        if not self.pre_quantized and self._schemes.default.whole_model:
            dtype = self.quantization_config.dtype
            raise ValueError(f"MonoQuantConfig({dtype!r}) casts the whole model; for a float16 model pass "
                             "dtype=torch.float16 to from_pretrained instead")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("mono_quant models cannot be offloaded to disk; use a device_map without 'disk'")

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        if self.pre_quantized:
            self.quantization_config.layers = _place_slots(model, self.quantization_config)
        else:
            self._selected = _select_layers(model, self._schemes, self.info)

    def param_needs_quantization(self, model: nn.Module, param_name: str, **kwargs: Any) -> bool:
        prefix, _, attr = param_name.rpartition(".")
        return not self.pre_quantized and attr == "weight" and prefix in self._selected

    def get_quantize_ops(self) -> ConversionOps:
        return _QuantizeOnLoad(self)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        where = str(getattr(model, "name_or_path", "") or getattr(model.config, "name_or_path", "") or "checkpoint")
        _fill_slots(model, where, self.info)
        if not self.pre_quantized:
            self.quantization_config.layers = layers_of_model(model, self.info)
            self.quantization_config.layout = "module"
        return model

    # ---- saving ----------------------------------------------------------------------------
    def get_state_dict_and_metadata(self, model: nn.Module):
        # save_pretrained asks this before writing config.json: refresh the layer records from
        # the model as it is now, in the layout state_dict() has (qweight, scale, ...).
        config = self.quantization_config
        config.layers = _current_layers(model, config.layers, self.info)
        config.layout = "module"
        return None, {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


# ---- placeholders while loading ----------------------------------------------------------------


class _FileSlot(nn.Module):
    """Where a quantized layer goes while transformers loads: one meta buffer per tensor of
    the layer's format, named as in the checkpoint. A buffer counts as loaded when
    transformers' loader set it (it marks what it loads with ``_is_hf_initialized``);
    placeholders it creates for missing keys carry no mark."""

    def __init__(self, entry: LayerEntry, float_module: nn.Module, layout: str) -> None:
        super().__init__()
        object.__setattr__(self, "_float_module", float_module)  # not a child: its tensors are not loaded
        self.entry, self.layout, self.loaded = entry, layout, set()
        for name, spec in entry.fmt.expected_tensors(entry.params).items():
            self.register_buffer(self.key(name), torch.empty(spec.shape, dtype=_dtype_for(name, spec, float_module),
                                                             device="meta"))

    def key(self, name: str) -> str:
        return self.entry.fmt.state_key(name) if self.layout == "state_dict" else name

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and name in self.__dict__.get("_buffers", {}):
            (self.loaded.add if getattr(value, "_is_hf_initialized", False) else self.loaded.discard)(name)
        super().__setattr__(name, value)

    def build(self, where: str) -> nn.Module:
        """The quantized module, after checking what was loaded like a file's layer."""
        entry, fmt = self.entry, self.entry.fmt
        label = f"layer {entry.name!r} ({entry.kind})"
        tensors = {}
        for name, spec in fmt.expected_tensors(entry.params).items():
            key = self.key(name)
            if key not in self.loaded:
                raise CorruptFileError(where, f"{label}: tensor {entry.name + '.' + key!r} is missing from the "
                                              "checkpoint or has the wrong shape; the weights do not match config.json")
            tensor = self._buffers[key]
            problem = spec.problem(tensor)
            if problem:
                raise CorruptFileError(where, f"{label}: tensor {entry.name + '.' + key!r} {problem}")
            tensors[name] = tensor
        problems = fmt.range_problems(entry.params, tensors)
        if problems:
            raise CorruptFileError(where, f"{label}: {problems[0]}; the checkpoint was altered or written by a "
                                          "broken tool")
        return fmt.build(entry.params, self._float_module, tensors)


class _QuantizedSlot(nn.Module):
    """Where a layer quantized while loading waits for the end of loading: the quantized
    module is held out of sight of transformers (which re-creates non-persistent buffers, such
    as the packed weight, after loading); only its bias is a buffer the loader fills."""

    def __init__(self, quantized: nn.Module, bias: torch.Tensor | None, record) -> None:
        super().__init__()
        object.__setattr__(self, "_quantized", quantized)
        self.record, self.loaded = record, set()
        if bias is not None:
            self.register_buffer("bias", bias.detach())
            if getattr(bias, "_is_hf_initialized", False):
                self.loaded.add("bias")

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and name in self.__dict__.get("_buffers", {}):
            (self.loaded.add if getattr(value, "_is_hf_initialized", False) else self.loaded.discard)(name)
        super().__setattr__(name, value)

    def build(self, where: str) -> nn.Module:
        quantized = self._quantized
        if "bias" in self._buffers:
            if "bias" not in self.loaded:
                raise CorruptFileError(where, f"layer {self.record.name!r}: its bias is missing from the checkpoint "
                                              "or has the wrong shape")
            quantized.bias = self._buffers["bias"].detach()
        return quantized


def _current_layers(model: nn.Module, known: dict[str, LayerEntry], info: QuantizationInfo) -> dict[str, LayerEntry]:
    """The records of the model's quantized modules now; a layer unchanged since it was loaded
    keeps its record (scheme, SQNR) from the checkpoint."""
    current = layers_of_model(model, info if info.layers else None)
    for name, entry in current.items():
        old = known.get(name)
        if old is not None and old.kind == entry.kind and old.params == entry.params and entry.sqnr_db is None:
            current[name] = old
    return current


def _dtype_for(name: str, spec, float_module: nn.Module) -> torch.dtype:
    """The dtype a slot buffer takes: the format's, or for a float tensor with a choice (the
    bias) the skeleton's, which is the dtype the model was asked to load in."""
    if len(spec.dtypes) == 1:
        return spec.dtypes[0]
    own = getattr(float_module, name, None)
    return own.dtype if isinstance(own, torch.Tensor) and own.dtype in spec.dtypes else spec.dtypes[0]


def _resolve(model: nn.Module, name: str) -> str | None:
    """``name`` (a layer of the saved model) as a module name of ``model``: as it is, without
    the base model's prefix, or with it (loading a base model from a head model's checkpoint,
    or the reverse); None when ``model`` has no such module."""
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name]
    if prefix:
        candidates += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
    return next((c for c in candidates if c in modules), None)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    old = model.get_submodule(name)
    for parent in model.modules():
        for attr, child in list(parent._modules.items()):
            if child is old:
                parent._modules[attr] = new


def _place_slots(model: nn.Module, config: MonoQuantConfig) -> dict[str, LayerEntry]:
    """A ``_FileSlot`` for each quantized layer of the checkpoint that the model has (layers
    of a head the model lacks are left out, as transformers leaves out their tensors); returns
    the records placed, under the model's names."""
    placed = {}
    tied = _tied_layers(model)
    for entry in config.layers.values():
        name = _resolve(model, entry.name)
        if name is None:
            continue
        module = model.get_submodule(name)
        where = f"quantization_config layer {entry.name!r} ({entry.kind})"
        if name in tied:
            raise ValueError(
                f"{where}: the model ties this layer's weight to another layer's (tie_word_embeddings), and a "
                "quantized weight cannot be shared with a float layer. Quantize the float checkpoint again with "
                f"this layer kept float (modules_to_not_convert=[{entry.name!r}], or without quantize_embeddings), "
                "or load with tie_word_embeddings=False if the head is stored separately")
        if type(module) not in entry.fmt.float_types and config.layout == "state_dict":
            entry = as_layer_of(entry, module)  # a table recorded as "int8_linear" by quantize_checkpoint
        if type(module) not in entry.fmt.float_types:
            wanted = " or ".join(t.__name__ for t in entry.fmt.float_types)
            raise ValueError(f"{where} replaces a {wanted}, but the model has a {type(module).__name__} there; load "
                             "with the model class that was saved")
        mismatch = entry.fmt.skeleton_mismatch(entry.params, module)
        if mismatch:
            raise ValueError(f"{where}: {mismatch}")
        located = dataclasses.replace(entry, name=name)
        _replace(model, name, _FileSlot(located, module, config.layout))
        placed[name] = located
    return placed


def _tied_layers(model: nn.Module) -> set[str]:
    """The layers whose weights transformers ties after loading (``all_tied_weights_keys``)."""
    tied = set()
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        tied |= {target.rpartition(".")[0], source.rpartition(".")[0]}
    return tied


def _select_layers(model: nn.Module, schemes: LayerSchemes, info: QuantizationInfo) -> dict[str, Any]:
    """Layer -> scheme for the layers quantize-on-load converts: ``dynamic_quantize``'s rules
    on the meta model, except the value checks (NaN / Inf), which run when the weight arrives.
    Weights transformers ties after loading (``all_tied_weights_keys``) stay float."""
    tied = _tied_layers(model)
    owners = parameter_owners(model)
    selected = {}
    for name, module in model.named_modules():
        tensors = own_tensors(module)
        if not tensors:
            continue
        scheme = schemes.for_layer(name, module)
        reason = module_skip_reason(name, module, scheme, owners, check_values=False)
        if reason is None and name in tied:
            reason = "its weight is tied to another module's by the model's config; both stay float"
        if reason is None:
            selected[name] = scheme
        else:
            info.add(skipped_layer(name, type(module).__name__, tensors, reason))
    return selected


def _fill_slots(model: nn.Module, where: str, info: QuantizationInfo) -> None:
    """Every slot replaced by its checked quantized module; quantize-on-load records go to ``info``."""
    # One at a time, so the file-layout tensors of a layer are released once its module is
    # built; a failure ends from_pretrained with an error, so no half-built model is returned.
    names = [name for name, module in model.named_modules() if isinstance(module, (_FileSlot, _QuantizedSlot))]
    for name in names:
        slot = model.get_submodule(name)
        new = slot.build(where)
        new.train(slot.training)
        _replace(model, name, new)
        if isinstance(slot, _QuantizedSlot):
            info.add(slot.record)
        del slot, new


class _QuantizeOnLoad(ConversionOps):
    """transformers' conversion op for quantizing while loading: gets one selected layer's
    float weight, returns nothing for it (the layer becomes a ``_QuantizedSlot``)."""

    def __init__(self, hf_quantizer: MonoQuantHfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict: dict[str, Any], model: nn.Module | None = None, full_layer_name: str | None = None,
                missing_keys: set[str] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        value = next(iter(input_dict.values()))
        value = value[0] if isinstance(value, list) else value
        prefix = full_layer_name.rpartition(".")[0]
        quantizer = self.hf_quantizer
        module = model.get_submodule(prefix)
        scheme = quantizer._selected.pop(prefix)
        reason = values_reason({"weight": value}, False)
        if reason is not None:  # stays float: transformers sets the weight as usual
            quantizer.info.add(skipped_layer(prefix, type(module).__name__, {"weight": value}, reason))
            return {full_layer_name: value}
        with torch.no_grad():
            temp = _float_twin(module, value)
            quantized, record = scheme.convert_module(prefix, temp)
        quantized.train(module.training)
        _replace(model, prefix, _QuantizedSlot(quantized, getattr(module, "bias", None), record))
        if missing_keys is not None:
            missing_keys.discard(full_layer_name)
        return {}


def _float_twin(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A copy of the (meta) layer ``module`` holding ``weight``; its bias, replaced once
    loaded, is zeros (weight-only schemes do not read it)."""
    twin = copy.deepcopy(module)  # meta tensors: no memory
    twin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if getattr(module, "bias", None) is not None:
        twin.bias = nn.Parameter(torch.zeros(module.bias.shape, dtype=module.bias.dtype, device=weight.device),
                                 requires_grad=False)
    return twin


# ---- models quantized by dynamic_quantize / static_quantize --------------------------------------


def attach(model: nn.Module, info: QuantizationInfo) -> bool:
    """Record on a transformers ``model`` quantized by mono_quant what ``save_pretrained``
    needs: ``config.quantization_config`` (a ``MonoQuantConfig`` with every quantized layer) and
    ``hf_quantizer``. Returns False (nothing recorded) when the model has no quantized layer.

    >>> attach(q_model, info)    # dynamic_quantize does this for transformers models
    True
    """
    layers = layers_of_model(model, info)
    if not layers:
        return False
    config = MonoQuantConfig.from_quantization_config(info.config, layers)
    quantizer = MonoQuantHfQuantizer(config, pre_quantized=True)
    quantizer.info = info
    model.config.quantization_config = config
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    return True


def _register() -> None:
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(MonoQuantConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(MonoQuantHfQuantizer)


_register()  # the purpose of importing this module
