"""The other ways to store one layer, made while its Hessian is in memory, for the mixed
precision plan (``max_bits_per_weight``): INT4 with the finer group sizes that divide the layer
(GPTQ again on the same factored Hessian) and per-channel INT8, each with its layer output error
on the calibration rows. The planner estimates each option's model-level loss from the measured
sensitivity of the run's INT4 times the ratio of these errors, so only the run's INT4 needs
the (costly) model forward passes of the sensitivity measurement. The options are kept until
the plan is made: with a budget the run holds about three more quantized copies of the
candidate layers (g64, g32 and INT8 from g128: some 4x the INT4 model's size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._layers import int4_bits_per_weight, int8_bits_per_weight
from ..config import QuantizationConfig
from ..info import LayerInfo
from ..schemes.int4 import Int4Scheme
from .gptq import Prepared, gptq_linear
from .stages import Chunk

GROUP_SIZES = (256, 128, 64, 32)


@dataclass
class Alternative:
    """One way to store a layer: ``precision`` "int4" (``group_size``) or "int8", its bits per
    weight, its relative output ``error`` on the calibration rows, the module and its record."""

    precision: str
    group_size: int | None
    bits: float
    error: float
    module: nn.Module
    record: LayerInfo


def relative_output_error(weight: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(D H D^T) / tr(W H W^T)`` with ``D = W - w_hat``: the squared error of the layer's
    output over the calibration rows (``H = sum x^T x``), relative to the output's energy
    (the bias cancels). Float32 products: a ratio of errors needs no more.

    >>> relative_output_error(fc.weight, q.dequantized_weight(), h)
    0.0071
    """
    hf = h.float()
    w = weight.detach().float()
    d = w - w_hat.float()
    den = float(((w @ hf) * w).sum())
    return float(((d @ hf) * d).sum()) / den if den > 0 else 0.0


def layer_alternatives(
    name: str, linear: nn.Linear, base: tuple[nn.Module, LayerInfo], prepared: Prepared, h: torch.Tensor,
    holdout: Sequence[Chunk], scheme: Int4Scheme, measured_on: str,
) -> list[Alternative]:
    """The run's INT4 (``base``, first), INT4 with each finer group size that divides the
    layer's inputs, and INT8, each with its output error on ``h``'s rows.

    >>> options = layer_alternatives("fc1", fc1, (q_fc1, record), prepared, h, holdout, scheme, "a held-back batch")
    """
    cfg = scheme.config
    k = linear.in_features
    module, record = base
    out = [Alternative("int4", cfg.group_size, int4_bits_per_weight(cfg.group_size),
                       relative_output_error(linear.weight, module.dequantized_weight(), h), module, record)]
    for g in GROUP_SIZES:
        if g < cfg.group_size and k % g == 0:
            finer: QuantizationConfig = dataclasses.replace(cfg, group_size=g)
            module, record = gptq_linear(name, linear, prepared, holdout, finer, measured_on)
            out.append(Alternative("int4", g, int4_bits_per_weight(g),
                                   relative_output_error(linear.weight, module.dequantized_weight(), h), module, record))
    module, record = scheme.int8_scheme.convert_module(name, linear)
    out.append(Alternative("int8", None, int8_bits_per_weight(tuple(linear.weight.shape), True),
                           relative_output_error(linear.weight, module.dequantized_weight(), h), module, record))
    return out
