"""The playground's views as plain functions, for Jupyter (or any script) as much as for the
marimo app: load a model, quantize it with ``dynamic_quantize``, compare its outputs.

    from mono_quant.playground import load_source, compare_outputs
    import mono_quant, mono_quant.plot

    src = load_source("minilm")                      # or "path/to/model.safetensors"
    qmodel, info = mono_quant.dynamic_quantize(src.model, "int4", group_size=64)
    info                                             # the report table
    compare_outputs(src, qmodel)                     # cosine vs fp32 per sentence
    mono_quant.plot.sqnr(info)
    mono_quant.plot.weight_histogram(src.model, qmodel, "encoder.layer.0.attention.self.query")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..report.agreement import OutputAgreement, output_agreement

DEMO = "minilm"
CONVERTIBLE = (nn.Linear, nn.Conv2d)


@dataclass
class Source:
    """A float model to play with: ``model`` (an nn.Module or a state_dict), a ``title``,
    and, for a runnable model, ``outputs(model)`` giving the rows ``compare_outputs`` compares
    (``labels`` names them).

    >>> src = load_source("minilm")
    >>> src.outputs(src.model).shape
    torch.Size([12, 384])
    """

    title: str
    model: nn.Module | dict[str, torch.Tensor]
    outputs: Callable[[Any], torch.Tensor] | None = None
    labels: list[str] = field(default_factory=list)
    what: str = "output"

    @property
    def runnable(self) -> bool:
        return self.outputs is not None


def load_source(spec: str = DEMO) -> Source:
    """``"minilm"``: the bundled all-MiniLM-L6-v2 encoder (offline; the ``demo`` extra),
    compared on the demo's sentence embeddings. Anything else is a checkpoint path read
    by mono_quant's checkpoint reader (a .safetensors file, an index or a folder, a .pt /
    .bin state_dict): it is quantized as a state_dict, so there are no outputs to compare.

    >>> load_source("model.safetensors").model["fc.weight"].shape
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be 'minilm' or a checkpoint path; got {type(spec).__name__}")
    if os.fspath(spec).strip().lower() == DEMO:
        return _minilm()
    from ..streaming import open_checkpoint

    path = os.path.expanduser(os.fspath(spec).strip())
    if not path:
        raise ValueError("give a checkpoint path (a .safetensors file, an index, a folder or a .pt / .bin "
                         "state_dict), or 'minilm' for the bundled demo model")
    checkpoint = open_checkpoint(path)
    state = checkpoint.read(list(checkpoint.names))
    if not any(t.is_floating_point() for t in state.values()):
        raise ValueError(f"{path}: holds no floating-point tensor; pass a float checkpoint")
    return Source(title=os.path.basename(path.rstrip("/")) or path, model=state)


def _minilm() -> Source:
    from ..demo import SENTENCES, embed, load_minilm

    model, tokenizer = load_minilm()
    return Source(title="all-MiniLM-L6-v2 (bundled demo model)", model=model,
                  outputs=lambda m: embed(m, tokenizer, SENTENCES), labels=list(SENTENCES),
                  what="sentence embedding")


def compare_outputs(source: Source, quantized: Any) -> OutputAgreement | None:
    """Cosine similarity of ``quantized``'s outputs against the float model's, one row per
    sample input; None when ``source`` is a state_dict (nothing to run).

    >>> compare_outputs(src, qmodel).min
    0.9991
    """
    if not source.runnable:
        return None
    with torch.no_grad():
        reference = source.outputs(source.model)
        outputs = source.outputs(quantized)
    return output_agreement(reference, outputs, source.labels, what=source.what)


def layer_names(model: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """Names a user may keep in float (``modules_to_not_convert``): the Linear and Conv2d
    modules of a model, or the prefixes of a state_dict's matrix weights.

    >>> layer_names(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    ['0']
    """
    if isinstance(model, nn.Module):
        return [name for name, module in model.named_modules() if isinstance(module, CONVERTIBLE) and name]
    return [key.rpartition(".")[0] for key, t in model.items()
            if key.endswith(".weight") and isinstance(t, torch.Tensor) and t.dim() >= 2]
