"""Per-layer plumbing shared by every entry point: which scheme converts a layer (the run's, or
the one its ``layer_config`` entry asks for), the warnings for name patterns that match no
layer, and the refusal of weights that were never loaded (the meta device).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ._layer_options import layer_override
from ._layers import state_kind
from .config import QuantizationConfig
from .info import QuantizationInfo
from .schemes.base import Scheme
from .schemes.embedding import EMBEDDING_TYPES, EmbeddingScheme
from .schemes.registry import get_scheme
from .selection import name_matches

# The options holding layer names or patterns, checked against the model's layer names.
PATTERN_OPTIONS = ("modules_to_not_convert", "skip_names", "layer_names", "layer_config")


class LayerSchemes:
    """The scheme of each layer: the first ``layer_config`` pattern that matches its name
    decides (a scheme made from the run's config with that entry's options), else the run's.

    >>> schemes = LayerSchemes(QuantizationConfig(dtype="int4", layer_config={"lm_head": "int8"}))
    >>> schemes.for_layer("lm_head").name, schemes.for_layer("fc1").name
    ('int8', 'int4')
    """

    def __init__(self, config: QuantizationConfig) -> None:
        self.config = config
        self.default: Scheme = get_scheme(config.dtype)(config)
        self._entries: list[tuple[str, Scheme]] = []
        # quantize_embeddings: the tables of a layer whose scheme's config asks for it
        self._tables: dict[int, Scheme] = {}
        for pattern, overrides in config.layer_config.items():
            layer_config = layer_override(config, overrides)
            self._entries.append((pattern, get_scheme(layer_config.dtype)(layer_config)))

    def for_layer(self, name: str, module: nn.Module | None = None,
                  tensors: Mapping[str, torch.Tensor] | None = None) -> Scheme:
        """The scheme of layer ``name``; with ``quantize_embeddings``, the embedding scheme for
        an embedding ``module`` (or a state_dict layer whose ``tensors`` look like a table)."""
        scheme = next((s for pattern, s in self._entries if name_matches(name, pattern)), self.default)
        if scheme.config.quantize_embeddings and _is_table(name, module, tensors):
            return self._table_scheme(scheme)
        return scheme

    def _table_scheme(self, scheme: Scheme) -> Scheme:
        found = self._tables.get(id(scheme))
        if found is None:
            found = self._tables[id(scheme)] = EmbeddingScheme(scheme.config)
        return found

    def finish(self, info: QuantizationInfo) -> None:
        """Every scheme's end-of-run warnings, once each."""
        for scheme in [self.default, *(scheme for _, scheme in self._entries), *self._tables.values()]:
            scheme.finish(info)


def _is_table(name: str, module: nn.Module | None, tensors: Mapping[str, torch.Tensor] | None) -> bool:
    if module is not None:
        return isinstance(module, EMBEDDING_TYPES)
    return tensors is not None and state_kind(name, tensors) == "Embedding-like"


def pattern_warnings(names: Iterable[str], config: QuantizationConfig) -> list[str]:
    """One line per name or pattern of the options in ``PATTERN_OPTIONS`` that matches none of
    ``names`` (the model's layer names): most likely a typo, which would otherwise do nothing.

    >>> pattern_warnings(["encoder.fc"], QuantizationConfig(modules_to_not_convert=["lm_hed"]))
    ["modules_to_not_convert entry 'lm_hed' matches no layer ..."]
    """
    names = [name for name in names if name]
    example = next((n for n in names if "." in n), names[0] if names else "")
    found = []
    for option in PATTERN_OPTIONS:
        for pattern in getattr(config, option):
            if not any(name_matches(name, pattern) for name in names):
                hint = f" (layer names look like {example!r})" if example else ""
                found.append(f"{option} entry {pattern!r} matches no layer; check its spelling{hint}")
    return found


def add_pattern_warnings(info: QuantizationInfo, names: Iterable[str], config: QuantizationConfig) -> None:
    """``pattern_warnings`` into ``info.warnings``, and as a UserWarning each."""
    for line in pattern_warnings(names, config):
        info.warnings.append(line)
        warnings.warn(line, UserWarning, stacklevel=3)


def check_not_meta(model: nn.Module | Mapping[str, torch.Tensor], caller: str) -> None:
    """A ValueError when weights of ``model`` are on the meta device: a skeleton built under
    ``torch.device("meta")`` or accelerate's ``init_empty_weights()`` holds no values to quantize.

    >>> check_not_meta(nn.Linear(4, 4, device="meta"), "dynamic_quantize")
    Traceback (most recent call last):
    ValueError: ...
    """
    if isinstance(model, nn.Module):
        named = [*model.named_parameters(), *_persistent_buffers(model)]
    else:
        named = [(k, t) for k, t in model.items() if isinstance(t, torch.Tensor)]
    meta = [name for name, tensor in named if tensor.is_meta]
    if meta:
        shown = ", ".join(repr(n) for n in meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise ValueError(
            f"{caller}: {len(meta)} weight(s) are on the meta device ({shown}): the model is a skeleton whose values "
            "were never loaded. Load the weights first (model.load_state_dict(state_dict, assign=True), or "
            "from_pretrained), or quantize without building the model: mono_quant.quantize_checkpoint(path, ...), "
            "or transformers' from_pretrained(path, quantization_config=MonoQuantConfig(...))"
        )


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                out.append((f"{module_name}.{name}" if module_name else name, buffer))
    return out
