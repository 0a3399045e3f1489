"""The CPU fast path of QuantizedLinear / QuantizedLinearInt4: when it runs, what it computes
on every dispatch path, and the packed weight storage (held once, saved in the canonical
layout, no write missed)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant
from mono_quant import _kernels as K
from mono_quant.nn import QuantizedLinear, QuantizedLinearInt4

from helpers import assert_activation_rounding_close, cosine

pytestmark = pytest.mark.skipif(not K.c_available(), reason="the C extension mono_quant._C is not built")

ISAS = K.linear_isas()


def make(kind: str, k: int, n: int, bias: bool = True, symmetric: bool = True) -> nn.Module:
    linear = nn.Linear(k, n, bias=bias)
    if kind == "int8":
        return QuantizedLinear.from_float(linear, mono_quant.QuantizationConfig(symmetric=symmetric))
    return QuantizedLinearInt4.from_float(linear, group_size=32, symmetric=symmetric)


KINDS = ["int8", "int4"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k, n", [(32, 16), (96, 17), (160, 40), (64, 1)])
@pytest.mark.parametrize("batch", [1, 2, 5, 16, 33, 64])
def test_every_path_matches_float_math_within_activation_rounding(isa, kind, k, n, batch):
    if kind == "int8":
        k += 3  # INT8 takes any in_features: also one that is not a multiple of the 32-block
    q = make(kind, k, n, symmetric=batch % 2 == 0)
    x = torch.randn(batch, k)
    with K.use_linear_isa(isa):
        assert q.uses_fast_path(x)
        y = q(x)
    assert y.shape == (batch, n) and y.dtype == torch.float32
    assert_activation_rounding_close(y, x, q.dequantized_weight(), q.bias)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_half_outputs(kind, dtype):
    q = make(kind, 128, 24).to(dtype)
    x = torch.randn(3, 128, dtype=dtype)
    y = q(x)
    assert y.dtype == dtype
    assert_activation_rounding_close(y, x, q.dequantized_weight(), q.bias)


@pytest.mark.parametrize("kind", KINDS)
def test_results_do_not_depend_on_the_thread_count(kind):
    q = make(kind, 256, 200)
    x = torch.randn(9, 256)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(q(x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_autograd_and_the_reference_backend_take_the_float_path(kind):
    q = make(kind, 64, 8)
    x = torch.randn(2, 64, requires_grad=True)
    assert not q.uses_fast_path(x)
    q(x).sum().backward()
    torch.testing.assert_close(x.grad, q.dequantized_weight().sum(0).expand(2, 64))
    with torch.no_grad():
        assert q.uses_fast_path(x)
    with K.use_backend("reference"):
        assert not q.uses_fast_path(x.detach())
        assert torch.equal(q(x.detach()), F.linear(x.detach(), q.dequantized_weight(), q.bias))
    assert not q.uses_fast_path(torch.randn(2, 64, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_the_weight_is_held_once_packed_and_saved_canonical(kind):
    q = make(kind, 128, 32)
    x = torch.randn(1, 128)
    y = q(x)
    assert q.packed_weight() is q.packed and q.packed_bytes() == q.packed.numel() > 0
    # The packed buffer is the module's only weight tensor: nothing else of that size.
    assert {name for name, _ in q.named_buffers()} == {"packed", "bias"}
    assert q.packed_bytes() <= 1.1 * q.storage_bytes()
    assert list(q.state_dict()) == ["qweight", "scale", "zero_point", "bias"]
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert torch.equal(clone.packed, q.packed) and torch.equal(clone(x), y)
    fresh = make(kind, 128, 32)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.packed, q.packed) and torch.equal(fresh(x), y)


@pytest.mark.parametrize("kind", KINDS)
def test_no_write_to_the_weights_is_missed(kind):
    q, other = make(kind, 128, 32), make(kind, 128, 32)
    x = torch.randn(4, 128)
    q(x)
    q.load_state_dict(other.state_dict())  # what loaders do
    assert torch.equal(q(x), other(x))
    q.qweight = make(kind, 128, 32).qweight  # an assigned tensor repacks
    assert not torch.equal(q(x), other(x))
    q.set_weight(other.qweight, other.scale * 2, other.zero_point)
    assert torch.allclose(q(x) - q.bias, 2 * (other(x) - other.bias), rtol=1e-5, atol=1e-5)
    with K.use_backend("reference"):  # both paths read the same packed bytes
        assert torch.allclose(q(x) - q.bias, 2 * (other(x) - other.bias), rtol=1e-2, atol=1e-3)
    # The canonical attributes are computed copies: a write to them would be lost, so it raises.
    for write in (lambda: q.scale.mul_(2), lambda: q.scale.data.mul_(2), lambda: q.scale.data.copy_(other.scale),
                  lambda: q.zero_point.__setitem__(0, 3), lambda: q.qweight.zero_(),
                  lambda: torch.mul(q.scale, 2, out=q.scale)):
        with pytest.raises(RuntimeError, match=r"computed from the packed weight .*set_weight"):
            with torch.no_grad():
                write()
    assert not q.scale.numpy().flags.writeable
    assert type(q.scale * 2) is torch.Tensor  # arithmetic on them gives plain tensors
    # A write into the module's own tensor, packed, is seen by the next forward of every path.
    before = q(x)
    with torch.no_grad():
        q.packed.copy_(other.packed)
    assert torch.equal(q(x), other(x)) and not torch.equal(q(x), before)


def test_a_quantized_model_runs_the_fast_path_end_to_end():
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 128), nn.GELU(), nn.Linear(128, 10))
    x = torch.randn(7, 256)
    for dtype in ("int8", "int4"):
        qmodel, _ = mono_quant.dynamic_quantize(model, dtype=dtype, group_size=32)
        with torch.no_grad():
            fast = qmodel(x)
            with K.use_backend("reference"):
                slow = qmodel(x)
        assert cosine(fast, slow) > 0.9999


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_the_fast_path_must_not_misread(kind):
    q = make(kind, 64, 16)
    with pytest.raises(ValueError, match="in_features=64"):
        q(torch.randn(2, 128))  # as many elements as [4, 64]: must not be reshaped into it
    x = torch.randn(64, 6).T  # not contiguous
    assert torch.equal(q(x), q(x.contiguous()))
    x = torch.randn(3, 64, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(q(x), q(x.detach()))


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_bias_is_used(kind):
    q = make(kind, 64, 16)
    x = torch.randn(2, 64)
    y = q(x)
    q.bias = q.bias + 1.0
    assert torch.allclose(q(x), y + 1.0, atol=1e-6)
    with torch.no_grad():
        q.bias.sub_(1.0)
    assert torch.allclose(q(x), y, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_activations_near_the_float_maximum_give_float_math(isa, kind, dtype):
    """The report's inputs: 1e37 (INT8), 4e37 (INT4), bf16's and fp16's maximum. float math
    and the reference path were finite, the C path gave inf / NaN."""
    linear = nn.Linear(64, 8)
    with torch.no_grad():
        linear.weight /= 64  # sum_k |w| <= 1/8: every result is well inside the range
    q = (QuantizedLinear.from_float(linear) if kind == "int8" else
         QuantizedLinearInt4.from_float(linear, group_size=32)).to(dtype)
    value = {"int8": 1e37, "int4": 4e37}[kind] if dtype == torch.float32 else torch.finfo(dtype).max
    x = torch.where(torch.rand(3, 64) < 0.5, -value, value)
    x[1] = torch.randn(64)
    x[2, 32:] *= 1e-20
    x = x.to(dtype)
    with K.use_linear_isa(isa):
        y = q(x)
    with K.use_backend("reference"):
        y_float = q(x)
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(y_float).all())
    assert_activation_rounding_close(y, x, q.dequantized_weight(torch.float64), q.bias)
