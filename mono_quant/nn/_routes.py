"""How the quantized modules answer the tools that take a model out of eager PyTorch.

``torch.jit.trace``, ``torch.compile``, ``torch.export`` and the meta device work through the
operators of ``mono_quant._ops``. ``torch.jit.script`` compiles Python source instead, and a
quantized module's forward calls Python (the operators' dispatch, the input check): it would
fail deep inside TorchScript's compiler with a message about type annotations. Every
quantized module refuses it up front instead, naming itself and the routes that work.
"""

from __future__ import annotations

from torch import nn


def refuse_script(module: nn.Module) -> None:
    """Raise the error ``torch.jit.script`` gives for a quantized ``module``."""
    raise RuntimeError(
        f"torch.jit.script cannot compile {type(module).__name__} ({module.extra_repr()}): mono_quant's "
        "quantized modules run C kernels through Python operators. Use torch.jit.trace(model, example_inputs) "
        "(records the mono_quant operators; needs `import mono_quant` before torch.jit.load), torch.compile(model), "
        "torch.export.export(model, args) or mono_quant.export_onnx(model, args, path)."
    )


class NoScriptMixin:
    """Makes ``torch.jit.script`` (which calls ``__prepare_scriptable__`` on every submodule)
    refuse the module with ``refuse_script``'s message."""

    def __prepare_scriptable__(self):  # noqa: ANN204 (torch hook)
        refuse_script(self)  # type: ignore[arg-type]
