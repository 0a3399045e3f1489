"""``validate``: four checks that a quantized model is usable, gathered in a ``ValidationReport``.

- ``sqnr``:  each quantized layer's weight SQNR against the original is at least ``min_sqnr_db``.
- ``size``:  the quantized tensors take no more bytes than the original ones.
- ``load``:  the model survives ``save_quantized`` + ``load_quantized`` exactly: on
             ``sample_input`` the outputs are equal bit for bit (a copy of the quantized
             model and the loaded one each run once, in eval mode under no_grad); without
             one, the loaded state (keys, dtypes, values) and module types are compared.
- ``range``: quantized values lie in their format's range, zero points too, scales are finite
             and positive, and cast (fp16) tensors are finite.

``dynamic_quantize`` runs them at the end (config ``validate=True``, ``on_failure="warn"``),
reusing the SQNR it measured, so the extra cost is one save and load of the quantized model.
Neither model passed in is changed, also when a check raises: no forward runs on them, and
nothing else writes to them.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import _kernels as K
from ._file_metadata import FLOAT_NAMES
from ._working_copy import inference, working_copy
from .errors import CorruptFileError, ValidationError
from .formats import format_for_module, format_for_state
from .info import QuantizationInfo, format_bytes, format_sqnr
from .report.display import ReportDisplay
from .state_dict import group_by_layer, join_key

CHECKS = ("sqnr", "size", "load", "range")
DEFAULT_MIN_SQNR_DB = 10.0  # below this a layer is "critical" (info.ACCURACY_LEVELS)
_SHOWN = 3

ModelOrState = nn.Module | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class CheckResult:
    """One check: ``status`` is "passed", "failed" or "skipped"; ``message`` says why."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status != "failed"


@dataclass(repr=False)  # repr, HTML, to_dict: mono_quant.report
class ValidationReport(ReportDisplay):
    """The results of ``validate``; ``passed`` is True when no check failed.

    >>> report = validate(model, qmodel, torch.randn(1, 64))
    >>> report.passed, report.checks["load"].message
    (True, 'outputs on the sample input are identical after save + load')
    """

    checks: dict[str, CheckResult] = field(default_factory=dict)
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks.values())

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks.values() if not check.passed]

    def summary(self) -> str:
        """One line: every failed check and its message, or that all checks passed."""
        if self.passed:
            ran = [c.name for c in self.checks.values() if c.status == "passed"]
            return f"all checks passed ({', '.join(ran) or 'none ran'})"
        return "; ".join(f"{c.name} check failed: {c.message}" for c in self.failures)

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise ValidationError(f"validation failed: {self.summary()}", self)

    def __str__(self) -> str:
        width = max((len(name) for name in self.checks), default=5)
        lines = [f"{name.ljust(width)}  {c.status.upper():7}  {c.message}" for name, c in self.checks.items()]
        lines.append("Validation " + ("passed" if self.passed else "FAILED"))
        return "\n".join(lines)


def validate(
    original: ModelOrState,
    quantized: ModelOrState,
    sample_input: Any = None,
    *,
    info: QuantizationInfo | None = None,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    checks: Iterable[str] = CHECKS,
) -> ValidationReport:
    """Check ``quantized`` (a model or state_dict from ``dynamic_quantize``) against
    ``original``. ``sample_input`` (a tensor, a tuple of arguments or a dict of keyword
    arguments) makes the load check compare outputs of a copy of ``quantized`` and of the
    reloaded model, both in eval mode; ``info`` supplies SQNRs already measured; ``checks``
    picks a subset of "sqnr", "size", "load", "range". Neither model is changed.

    >>> report = validate(model, qmodel, torch.randn(1, 64))
    >>> print(report)
    """
    chosen = tuple(checks)
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; choose from {', '.join(CHECKS)}")
    both_modules = isinstance(original, nn.Module) and isinstance(quantized, nn.Module)
    both_states = isinstance(original, Mapping) and isinstance(quantized, Mapping)
    if not (both_modules or both_states):
        raise TypeError("original and quantized must both be nn.Modules or both be state_dicts; got "
                        f"{type(original).__name__} and {type(quantized).__name__}")
    report = ValidationReport()
    layers = quantized_layers(original, quantized)
    runners = {
        "sqnr": lambda: _check_sqnr(layers, _measured(info), min_sqnr_db, report),
        "size": lambda: _check_size(original, quantized, report),
        "load": lambda: _check_load(original, quantized, sample_input),
        "range": lambda: _check_range(layers),
    }
    with torch.no_grad():
        for name in CHECKS:
            if name in chosen:
                report.checks[name] = runners[name]()
    return report


def validate_after_quantization(original: ModelOrState, result: ModelOrState, info: QuantizationInfo) -> None:
    """The end-of-``dynamic_quantize`` run: store the report in ``info.validation`` and act on
    a failure as ``config.on_failure`` says ("error" raises ValidationError, "warn" warns and
    adds to ``info.warnings``, "ignore" does nothing else)."""
    config = info.config
    checks = [c for c in CHECKS if c != "sqnr" or config.compute_sqnr]
    act_on_report(validate(original, result, info=info, checks=checks), info)


def act_on_report(report: ValidationReport, info: QuantizationInfo) -> None:
    """Store ``report`` in ``info.validation`` and act on a failure as ``config.on_failure``
    says: "error" raises ValidationError, "warn" warns and adds to ``info.warnings``."""
    info.validation = report
    if report.passed or info.config.on_failure == "ignore":
        return
    message = f"validation failed: {report.summary()}"
    if info.config.on_failure == "error":
        raise ValidationError(message + " (pass on_failure='warn' to get the model anyway)", report)
    info.warnings.append(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def validate_file(
    path: str | os.PathLike[str],
    original: str | os.PathLike[str] | None = None,
    *,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
) -> ValidationReport:
    """The four checks from files alone (no model is built); ``mono-quant validate`` runs this.

    - ``load``:  the file reads back completely: header, every tensor's CRC-32, the metadata,
                 and each layer's tensors against its record (the same checks as loading).
    - ``range``: as in ``validate``.
    - ``sqnr``:  with ``original`` (the float checkpoint: a .safetensors file, index, folder or
                 .pt), each layer is dequantized and compared with its original weight, one
                 layer in memory at a time; without it, the SQNRs recorded in the metadata.
    - ``size``:  stored bytes against the original checkpoint's, or, without it, against the
                 original shapes and dtypes the metadata records.

    >>> print(validate_file("model-int8.safetensors", "model.safetensors"))
    """
    from .io import read_quantized
    from .streaming import open_checkpoint

    report = ValidationReport()
    try:
        tensors, meta = read_quantized(path)
    except CorruptFileError as exc:
        report.checks["load"] = CheckResult("load", "failed", str(exc))  # names the file
        for name in ("sqnr", "size", "range"):
            report.checks[name] = CheckResult(name, "skipped", "the file cannot be read")
        return _ordered(report)
    report.checks["load"] = CheckResult(
        "load", "passed", f"{len(tensors)} tensors and {len(meta.layers)} layer records read back and agree "
                          "(CRC-32, dtypes, shapes)")
    layers = [_file_layer(entry, tensors, meta) for entry in meta.layers.values()]
    source = None if original is None else open_checkpoint(original)
    if source is not None:
        for layer in layers:
            layer.original = _original_weight(layer, source)
        report.checks["sqnr"] = _check_sqnr(layers, {}, min_sqnr_db, report)
    else:
        recorded = {e.name: e.sqnr_db for e in meta.layers.values() if e.sqnr_db is not None}
        known = [layer for layer in layers if layer.name in recorded]
        report.checks["sqnr"] = (_check_sqnr(known, recorded, min_sqnr_db, report) if known else
                                 CheckResult("sqnr", "skipped", "the file records no SQNR; pass the original "
                                                                "checkpoint to measure it"))
    report.checks["size"] = _check_file_size(tensors, meta, layers, source, report)
    report.checks["range"] = _check_range(layers)
    return _ordered(report)


def _file_layer(entry, tensors: Mapping[str, torch.Tensor], meta) -> QuantizedLayer:
    if entry.fmt is None:
        own = {name: tensors[join_key(entry.name, name)] for name in entry.params["tensors"]}
    else:
        own = {name: tensors[meta.file_key(entry, name)] for name in entry.fmt.expected_tensors(entry.params)}
    return QuantizedLayer(entry.name, entry.fmt, entry.params, own, None)


def _original_weight(layer: QuantizedLayer, source) -> torch.Tensor | None:
    names = [join_key(layer.name, "weight")] if layer.fmt is not None else [
        join_key(layer.name, k) for k in layer.tensors]
    if not all(name in source.names for name in names):
        return None
    found = source.read(names)
    if layer.fmt is not None:
        return found[names[0]]
    return torch.cat([found[n].detach().reshape(-1).float() for n in names])


def _check_file_size(tensors, meta, layers: list[QuantizedLayer], source, report) -> CheckResult:
    stored = {k: t for k, t in tensors.items() if k not in meta.aliases}
    after = sum(t.numel() * t.element_size() for t in stored.values())
    if source is not None:
        before = sum(math.prod(shape) * dtype.itemsize for dtype, shape in source.shapes().values())
    else:
        before = after
        for layer in layers:
            entry = meta.layers[layer.name]
            if entry.original_dtype is None:
                return CheckResult("size", "skipped", f"the file does not record layer {layer.name!r}'s original "
                                                      "dtype; pass the original checkpoint")
            itemsize = FLOAT_NAMES[entry.original_dtype].itemsize
            if layer.fmt is None:
                before += sum(t.numel() * (itemsize - t.element_size()) for t in layer.tensors.values())
            else:
                parts = [t for n, t in layer.tensors.items() if n in layer.fmt.state_keys]
                before += math.prod(entry.params["original_shape"]) * itemsize
                before -= sum(t.numel() * t.element_size() for t in parts)
    report.bytes_before, report.bytes_after = before, after
    text = f"{format_bytes(before)} -> {format_bytes(after)}"
    if after > before:
        return CheckResult("size", "failed", f"the quantized file holds more bytes than the original ({text})")
    return CheckResult("size", "passed", f"{text} ({before / after if after else 1.0:.2f}x smaller)")


def _ordered(report: ValidationReport) -> ValidationReport:
    report.checks = {name: report.checks[name] for name in CHECKS if name in report.checks}
    return report


# ---------------------------------------------------------------------------------------------
# The quantized layers of a model or state_dict, in one shape for every check.
# ---------------------------------------------------------------------------------------------


@dataclass
class QuantizedLayer:
    """A quantized layer found in ``quantized``: a format layer (``fmt`` set) or a cast one."""

    name: str
    fmt: Any
    params: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    original: torch.Tensor | None  # the float weight (format) or float tensors concatenated (cast)


def quantized_layers(original: ModelOrState, quantized: ModelOrState) -> list[QuantizedLayer]:
    """Every layer of ``quantized`` stored differently from the same layer of ``original``
    (layers that were already quantized in ``original`` do not count)."""
    if isinstance(quantized, nn.Module):
        own = {name: _own_tensors(m) for name, m in quantized.named_modules()}
        fmts = {name: format_for_module(m) for name, m in quantized.named_modules()}
        params = {name: fmt.params(quantized.get_submodule(name)) for name, fmt in fmts.items() if fmt is not None}
        before_modules = dict(original.named_modules())
        originals = {name: _own_tensors(m) for name, m in before_modules.items()}
        already = {name for name, m in before_modules.items() if format_for_module(m) is not None}
    else:
        own = group_by_layer(quantized)
        fmts, params = {}, {}
        for prefix, tensors in own.items():
            found = format_for_state(tensors)
            if found is not None:
                fmts[prefix], params[prefix] = found
                own[prefix] = found[0].to_module_names(tensors)
        originals = group_by_layer(original)
        already = {prefix for prefix, tensors in originals.items() if format_for_state(tensors) is not None}
    layers = []
    for name, tensors in own.items():
        if name in already:
            continue
        before = originals.get(name, {})
        fmt = fmts.get(name)
        if fmt is not None:
            layers.append(QuantizedLayer(name, fmt, params[name], tensors, before.get("weight")))
            continue
        cast = [k for k, t in tensors.items() if t.is_floating_point() and k in before
                and before[k].is_floating_point() and before[k].dtype != t.dtype]
        if cast:
            joined = torch.cat([before[k].detach().reshape(-1).float() for k in cast])
            layers.append(QuantizedLayer(name, None, {"tensors": cast}, {k: tensors[k] for k in cast}, joined))
    return layers


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own tensors as a file holds them: packed layers give their canonical
    ``qweight`` / ``scale`` / ``zero_point`` (their ``state_dict`` entries), not ``packed``."""
    out: dict[str, torch.Tensor] = {}
    module._save_to_state_dict(out, "", keep_vars=True)
    return {k: t for k, t in out.items() if isinstance(t, torch.Tensor)}


# ---------------------------------------------------------------------------------------------
# The four checks.
# ---------------------------------------------------------------------------------------------


def _measured(info: QuantizationInfo | None) -> dict[str, float]:
    if info is None:
        return {}
    return {name: layer.sqnr_db for name, layer in info.layers.items() if layer.sqnr_db is not None}


def _check_sqnr(layers: list[QuantizedLayer], known: Mapping[str, float], min_db: float, report) -> CheckResult:
    """SQNR of every layer (from ``known`` when there, else measured) against ``min_db``."""
    if not layers:
        return CheckResult("sqnr", "skipped", "no quantized layers")
    missing, broken = [], []
    for layer in layers:
        if layer.name in known:
            report.layer_sqnr[layer.name] = known[layer.name]
            continue
        try:
            measured = _measure_sqnr(layer)
        except ValueError as exc:  # scales the kernels refuse: the range check says which
            broken.append(f"{layer.name or '(root)'} ({exc})")
            continue
        if measured is None:
            missing.append(layer.name or "(root)")
        else:
            report.layer_sqnr[layer.name] = measured
    if broken:
        return CheckResult("sqnr", "failed", f"cannot dequantize {_listing(broken)}")
    low = sorted(((db, name) for name, db in report.layer_sqnr.items() if not db >= min_db))
    if low:
        shown = ", ".join(f"{name or '(root)'} ({format_sqnr(db)})" for db, name in low[:_SHOWN])
        more = f" and {len(low) - _SHOWN} more" if len(low) > _SHOWN else ""
        return CheckResult("sqnr", "failed", f"{len(low)} layer(s) below {min_db:g} dB: {shown}{more}; keep them in "
                                             "float (modules_to_not_convert) or use a finer dtype")
    if missing and not report.layer_sqnr:
        return CheckResult("sqnr", "skipped", f"no original weights to compare with ({_listing(missing)})")
    worst = min(report.layer_sqnr.items(), key=lambda item: item[1])
    note = f"; no original for {_listing(missing)}" if missing else ""
    return CheckResult("sqnr", "passed", f"{len(report.layer_sqnr)} layer(s) >= {min_db:g} dB, lowest "
                                         f"{worst[0] or '(root)'} at {format_sqnr(worst[1])}{note}")


def _measure_sqnr(layer: QuantizedLayer) -> float | None:
    reference = layer.original
    if reference is None or reference.is_meta:
        return None
    if layer.fmt is None:
        approx = torch.cat([t.detach().reshape(-1).float() for t in layer.tensors.values()])
    else:
        approx = layer.fmt.dequantize(layer.params, layer.tensors)
    if approx.shape != reference.shape or approx.is_meta:
        return None
    reference = reference.detach().float().to(approx.device)
    if not (bool(torch.isfinite(reference).all()) and bool(torch.isfinite(approx).all())):
        return -math.inf
    return K.sqnr(reference, approx)


def _check_size(original: ModelOrState, quantized: ModelOrState, report) -> CheckResult:
    report.bytes_before = _state_bytes(original)
    report.bytes_after = _state_bytes(quantized)
    before, after = report.bytes_before, report.bytes_after
    text = f"{format_bytes(before)} -> {format_bytes(after)}"
    if after > before:
        return CheckResult("size", "failed", f"the quantized model is larger ({text}); check which layers grew")
    ratio = before / after if after else 1.0
    return CheckResult("size", "passed", f"{text} ({ratio:.2f}x smaller)")


def _check_range(layers: list[QuantizedLayer]) -> CheckResult:
    if not layers:
        return CheckResult("range", "skipped", "no quantized layers")
    problems = []
    for layer in layers:
        if any(t.is_meta for t in layer.tensors.values()):
            continue
        if layer.fmt is not None:
            found = layer.fmt.range_problems(layer.params, layer.tensors)
        else:
            found = [f"{k} has non-finite values" for k, t in layer.tensors.items() if not bool(torch.isfinite(t).all())]
        problems += [f"{layer.name or '(root)'}: {p}" for p in found]
    if problems:
        more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        return CheckResult("range", "failed", "; ".join(problems[:_SHOWN]) + more)
    return CheckResult("range", "passed", f"{len(layers)} layer(s): values in range, scales finite and positive")


def _check_load(original: ModelOrState, quantized: ModelOrState, sample_input: Any) -> CheckResult:
    from .io import load_quantized, save_quantized

    state = quantized.state_dict() if isinstance(quantized, nn.Module) else quantized
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in state.values()):
        return CheckResult("load", "skipped", "the quantized model has tensors on the meta device")
    compare_outputs = isinstance(quantized, nn.Module) and sample_input is not None
    if compare_outputs:
        # A copy runs: a forward may change the model it runs even in eval mode (a buffer it
        # updates, a cache). Run before loading, so at most two models are in memory at once.
        expected = _run(working_copy(quantized, "validate", " or leave sample_input out"), sample_input)
    suffix = ".safetensors" if _has_safetensors() else ".pt"
    with tempfile.TemporaryDirectory(prefix="mono_quant_validate_") as folder:
        path = os.path.join(folder, "model" + suffix)
        try:
            save_quantized(quantized, path)
            if isinstance(quantized, nn.Module):
                loaded = load_quantized(path, meta_skeleton(original))
            else:
                loaded, _ = load_quantized(path)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            return CheckResult("load", "failed", f"save + load ({suffix}) raised {type(exc).__name__}: {exc}")
    if compare_outputs:
        device = next((t.device for t in state.values()), torch.device("cpu"))
        problem = _same_output(expected, _run(loaded.to(device), sample_input), "output")
        what = "outputs on the sample input are identical after save + load"
    else:
        problem = _same_state(quantized, loaded)
        what = f"the state after save + load ({suffix}) is identical" + (
            "; pass sample_input to compare outputs" if isinstance(quantized, nn.Module) else "")
    if problem:
        return CheckResult("load", "failed", f"after save + load ({suffix}) {problem}")
    return CheckResult("load", "passed", what)


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose saved tensors are on the meta device (nothing is allocated for
    them); non-persistent buffers, which files do not hold, are copied."""
    memo: dict[int, Any] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        if isinstance(tensor, torch.Tensor) and id(tensor) not in memo:
            empty = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def _run(model: nn.Module, sample_input: Any) -> Any:
    """One forward of ``model`` (validate's own copy) in eval mode under no_grad, on a copy of
    ``sample_input`` (a forward may write to its input, which must not reach the caller or the
    next run). The random generators of the CPU and of the CUDA devices in use are seeded
    alike for every run and put back afterwards; no other generator is touched."""
    args = _fresh(sample_input)
    tensors = [*model.parameters(), *model.buffers(), *_tensors_in(args)]
    cuda = sorted({t.device.index for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), inference(model):
        torch.default_generator.manual_seed(0)  # a forward that draws random numbers draws the same ones
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(0)
        if isinstance(args, tuple):
            return model(*args)
        if isinstance(args, Mapping):
            return model(**args)
        return model(args)


def _fresh(value: Any) -> Any:
    """``value`` with every tensor in it (also inside tuples, lists and dicts) cloned."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, tuple):
        items = [_fresh(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # namedtuples stay
    if isinstance(value, Mapping):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def _same_output(a: Any, b: Any, where: str) -> str | None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where} is a tensor in one model only"
        if not bitwise_equal(a, b):
            return f"{where} differs (dtype/shape {a.dtype}/{list(a.shape)} vs {b.dtype}/{list(b.shape)})"
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            return f"{where} has different keys"
        return next((p for k in a if (p := _same_output(a[k], b[k], f"{where}[{k!r}]"))), None)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str):
        if len(a) != len(b):
            return f"{where} has different lengths"
        return next((p for i, (x, y) in enumerate(zip(a, b)) if (p := _same_output(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where} differs"


def _same_state(quantized: ModelOrState, loaded: ModelOrState) -> str | None:
    if isinstance(quantized, nn.Module):
        types_q = [(n, type(m)) for n, m in quantized.named_modules()]
        types_l = [(n, type(m)) for n, m in loaded.named_modules()]
        if types_q != types_l:
            return "the module types differ"
        quantized, loaded = quantized.state_dict(), loaded.state_dict()
    if quantized.keys() != loaded.keys():
        return f"the keys differ ({_listing(sorted(set(quantized) ^ set(loaded)))})"
    for key, tensor in quantized.items():
        other = loaded[key]
        if not bitwise_equal(tensor, other):
            return f"tensor {key!r} differs"
    return None


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (so NaN equals the same NaN, and -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    if a.is_floating_point() and a.numel():
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(bits), b.view(bits)
    return torch.equal(a, b)


def _state_bytes(model: ModelOrState) -> int:
    state = model.state_dict() if isinstance(model, nn.Module) else model
    seen, total = set(), 0
    for tensor in state.values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.device, 0 if tensor.is_meta else tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tensor.dtype)
        if tensor.is_meta or not tensor.numel() or key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _has_safetensors() -> bool:
    try:
        import safetensors  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _listing(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")

