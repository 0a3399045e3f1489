"""GPTQ for one nn.Linear: its Hessian from the captured inputs, damping and factorisation
(torch.linalg Cholesky, float64), the column loop (C, ``_kernels.gptq_int4``), and its record.

Static groups: each group's scale and zero point are those the data-free INT4 quantizer picks
on the original weights (``scale_method`` included), so the stored layout, the kernels and the
files are exactly those of data-free INT4; GPTQ only chooses the nibbles. Inputs the calibration
data never activated (a zero Hessian diagonal) are decoupled from the rest: those columns are
rounded to nearest, as without GPTQ, rather than zeroed, since other data may use them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .. import _kernels as K
from .._layers import dtype_name, int4_bits_per_weight, own_tensors, tensor_bytes
from ..config import QuantizationConfig
from ..info import LayerInfo
from ..nn import QuantizedLinearInt4
from .stages import Chunk

DAMP_RETRIES = 4  # after a failed factorisation the damping grows x10, this many times
SQNR_MAX_ROWS = 256  # held-back token rows a layer's output SQNR is measured on (enough for 0.1 dB)


@dataclasses.dataclass(frozen=True)
class Factor:
    """``v``, upper triangular with ``v v^T = H + damp * mean(diag H) * I`` (float32, processing
    order), and the damping fraction that made the factorisation succeed."""

    v: torch.Tensor
    damp: float


def hessian(chunks: Sequence[Chunk], k: int) -> tuple[torch.Tensor, int]:
    """``sum x^T x`` over the counted rows of ``chunks`` (float64 ``[k, k]``, symmetric) and the
    rows counted.

    >>> h, rows = hessian(inputs["fc1"].chunks, 384)
    """
    h = torch.zeros(k, k, dtype=torch.float64)
    rows = 0
    for chunk in chunks:
        rows += K.gptq_hessian_add(chunk.x, chunk.mask, h)
    return K.hessian_symmetric(h), rows


def hessian_factor(h: torch.Tensor, order: torch.Tensor | None, damp: float, name: str) -> Factor:
    """Factor ``h`` in processing ``order`` (None: as it is), damped, as ``v v^T`` with ``v``
    upper triangular; on failure retry with 10x the damping, ``DAMP_RETRIES`` times, then raise
    a ValueError that names the layer. With J the exchange matrix (reversed order), J H J =
    L L^T gives v = J L J: one Cholesky, no inverse (the column loop works with v itself).

    >>> hessian_factor(h, torch.argsort(h.diagonal(), descending=True), 0.01, "fc1").v.shape
    torch.Size([384, 384])
    """
    k = h.shape[0]
    reverse = torch.arange(k - 1, -1, -1) if order is None else order.flip(0)
    flipped = h[reverse[:, None], reverse]  # J P^T H P J in one gather
    diagonal = flipped.diagonal()
    mean = float(diagonal.mean())
    fractions = [damp] + [max(damp, 1e-4) * 10.0**i for i in range(1, DAMP_RETRIES + 1)]
    added = 0.0
    for fraction in fractions:
        diagonal.add_(fraction * mean - added)
        added = fraction * mean
        lower, info = torch.linalg.cholesky_ex(flipped)
        if int(info) != 0:
            continue
        v = lower.float().flip(0, 1)
        if bool(torch.isfinite(v.diagonal()).all()) and bool((v.diagonal() > 0).all()) and bool(torch.isfinite(v).all()):
            return Factor(v, fraction)
    raise ValueError(
        f"GPTQ: the Hessian of layer {name!r} could not be factored even with damp={fractions[-1]:g} "
        f"(the calibration inputs of this layer are degenerate); leave it out with "
        f"modules_to_not_convert=[{name!r}] or give more varied calibration data"
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the layers that share one Hessian share: the processing order (act-order), the
    factor of the damped Hessian in that order, the dead inputs and the tokens counted."""

    perm: torch.Tensor | None
    factor: Factor
    dead_inputs: int
    rows: int


def prepare(h: torch.Tensor, rows: int, cfg: QuantizationConfig, name: str) -> Prepared:
    """Order and factor the Hessian ``h`` of ``rows`` tokens (``name``: its first layer, for
    errors). A dead input (``H_ii = 0``) gets 1 on the diagonal: decoupled from the others, its
    column is rounded to nearest.

    >>> prepared = prepare(h, rows, cfg, "encoder.layer.0.attention.self.query")
    """
    dead = torch.diagonal(h) == 0
    if bool(dead.any()):
        h = h.clone()
        torch.diagonal(h)[dead] = 1.0
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if cfg.act_order else None
    return Prepared(perm, hessian_factor(h, perm, cfg.damp, name), int(dead.sum()), rows)


def gptq_linear(
    name: str, linear: nn.Linear, prepared: Prepared, holdout: Sequence[Chunk], cfg: QuantizationConfig,
    measured_on: str,
) -> tuple[QuantizedLinearInt4, LayerInfo]:
    """Quantize ``linear`` (left unchanged) with GPTQ on its ``prepare``d Hessian; the record's
    SQNR is that of the layer's output on the ``holdout`` inputs.

    >>> q, record = gptq_linear("fc1", model.fc1, prepared, inputs["fc1"].holdout, cfg, "a held-back batch")
    """
    g, perm = cfg.group_size, prepared.perm
    w = linear.weight.detach().float()
    q_free, scale, zp = K.int4_quantize(w, g, cfg.symmetric, cfg.scale_method)  # the static groups
    qweight = K.gptq_int4(w if perm is None else w[:, perm], prepared.factor.v, perm, scale, zp, g)
    layer = _module(linear, qweight, scale, zp, cfg)
    details = {
        "method": "gptq", "act_order": cfg.act_order, "damp": prepared.factor.damp,
        "calibration_rows": prepared.rows, "dead_inputs": prepared.dead_inputs,
    }
    return layer, _record(name, linear, layer, cfg, details, (qweight, q_free, scale, zp), holdout, measured_on)


def _module(linear: nn.Linear, qweight: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
            cfg: QuantizationConfig) -> QuantizedLinearInt4:
    bias = linear.bias
    layer = QuantizedLinearInt4(linear.in_features, linear.out_features, bias is not None,
                                group_size=cfg.group_size, symmetric=cfg.symmetric, device="meta",
                                bias_dtype=linear.weight.dtype if bias is None else bias.dtype)
    layer.set_weight(qweight, scale, zp)
    layer.bias = None if bias is None else bias.detach().clone()
    layer.train(linear.training)
    return layer


def _record(name: str, linear: nn.Linear, layer: QuantizedLinearInt4, cfg: QuantizationConfig,
            gptq: dict, nibbles: tuple[torch.Tensor, ...], holdout: Sequence[Chunk],
            measured_on: str) -> LayerInfo:
    """The record of a GPTQ layer; ``nibbles`` = (qweight, data-free qweight, scale, zero point)."""
    weight = linear.weight.detach()
    symmetry = "symmetric" if cfg.symmetric else "asymmetric"
    details = {
        "group_size": cfg.group_size, "symmetric": cfg.symmetric, "scale_method": cfg.scale_method,
        "weight_dtype": dtype_name(weight.dtype), "bias": linear.bias is not None,
        "bits_per_weight": int4_bits_per_weight(cfg.group_size), **gptq,
    }
    sqnr = None
    if cfg.compute_sqnr:
        qweight, q_free, scale, zp = nibbles
        w_hat = K.int4_dequantize(qweight, scale, zp, cfg.group_size)
        free = K.int4_dequantize(q_free, scale, zp, cfg.group_size)
        details["weight_sqnr_db"] = K.sqnr(weight.float(), w_hat)
        sqnr = output_sqnr(weight, w_hat, holdout)
        if sqnr is not None:
            details["output_sqnr_db"] = sqnr
            details["data_free_output_sqnr_db"] = output_sqnr(weight, free, holdout)
            details["sqnr_measured_on"] = measured_on
        else:  # the held-back batch never reached this layer
            sqnr = details["weight_sqnr_db"]
    return LayerInfo(
        name=name, module_type=type(linear).__name__,
        scheme=f"int4 g{cfg.group_size} {symmetry} {cfg.scale_method} gptq", dtype="int4",
        shape=tuple(weight.shape), bytes_before=tensor_bytes(own_tensors(linear).values()),
        bytes_after=layer.storage_bytes(), sqnr_db=sqnr, details=details,
    )


def output_sqnr(weight: torch.Tensor, w_hat: torch.Tensor, inputs: Sequence[Chunk]) -> float | None:
    """SQNR (dB) of ``x @ w_hat.T`` against ``x @ weight.T`` over the first ``SQNR_MAX_ROWS``
    counted rows of ``inputs`` (the bias cancels); None without rows.

    >>> output_sqnr(fc.weight, q.dequantized_weight(), inputs["fc"].holdout)
    31.4
    """
    xs = [c.x if c.mask is None else c.x[c.mask] for c in inputs]
    xs = [x for x in xs if x.shape[0]]
    if not xs:
        return None
    x = torch.cat(xs)[:SQNR_MAX_ROWS].float()
    y = x @ weight.float().T
    return K.sqnr(y, y - x @ (weight.float() - w_hat.float()).T)
