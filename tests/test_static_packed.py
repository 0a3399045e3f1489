"""The packed static INT8 Linear (csrc/linear_static*.c, StaticQuantizedLinear's forward).

Every path (portable, AVX2, AVX-512 VNNI, the torch reference) gives the bits of the canonical
pipeline it replaces -- quantize the input with the calibrated scale and zero point, then the
integer x integer kernel on the canonical weight -- including at the int32 limit of its sums
and on rows long enough to be summed in chunks; the weight is held once, packed, and the
state_dict keeps the canonical file layout.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mono_quant
from mono_quant import _kernels as K
from mono_quant import _reference as ref
from mono_quant.nn import StaticQuantizedLinear

requires_c = pytest.mark.skipif(not K.c_available(), reason="C extension not built")
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def isas() -> list[str]:
    return K.linear_isas() if K.c_available() else []


def make(n: int, k: int, *, activation_symmetric=False, symmetric=True, bias=True, input_range=(-2.0, 3.0)):
    config = mono_quant.QuantizationConfig(activation_symmetric=activation_symmetric, symmetric=symmetric)
    return StaticQuantizedLinear.from_float(nn.Linear(k, n, bias=bias), config, input_range=input_range)


def canonical_pipeline(layer: StaticQuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """What the layer computed before its weight was packed: quantize, then linear_static."""
    w = layer.canonical_weight()
    xq = K.quantize(x, layer.input_scale, layer.input_zero_point, axis=None, qdtype=layer.input_qdtype)
    return K.linear_static(xq, layer.input_scale, layer.input_zero_point, w["qweight"], w["scale"],
                           w["zero_point"], layer.bias, x.dtype)


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def outputs_on_every_path(layer: StaticQuantizedLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for isa in isas():
            with K.use_linear_isa(isa):
                assert K.linear_static_isa() == isa
                out[isa] = layer(x)
        with K.use_backend("reference"):
            out["reference"] = layer(x)
    return out


# ---- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation_symmetric", [False, True], ids=["uint8_in", "int8_in"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["int8_w", "uint8_w"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_every_path_gives_the_canonical_pipeline_bits(activation_symmetric, symmetric, dtype):
    # n not a multiple of the 16-row tile, k not a multiple of the 32-value block, batch sizes
    # that hit the GEMV path, full and partial row groups of the batched passes
    for n, k, bias in ((40, 64, True), (17, 33, False), (5, 7, True), (33, 100, True)):
        layer = make(n, k, activation_symmetric=activation_symmetric, symmetric=symmetric, bias=bias)
        for m in (1, 2, 3, 4, 5, 9):
            x = (torch.randn(m, k) * 3).to(dtype)  # some values beyond the calibrated range: clamped
            expected = canonical_pipeline(layer, x)
            for path, y in outputs_on_every_path(layer, x).items():
                assert y.dtype == dtype, path
                assert_bits_equal(y, expected)


@requires_c
def test_sums_at_the_int32_limit_and_longer_rows_are_exact():
    """k = 32768 with every product at 255 * 255 puts the sum at 2.13e9, just below 2^31: the
    wrapping int32 epilogue must still be exact; longer rows are summed in chunks into int64."""
    for k in (32768, 32769, 70000):
        n = 18
        layer = make(n, k, symmetric=False, input_range=(-1.0, 0.0))
        assert int(layer.input_zero_point) == 255  # x = -1 quantizes to 0: x - zp = -255
        qweight = torch.full((n, k), 255, dtype=torch.uint8)
        qweight[1::2] = 0  # and rows at the other end: +255 * 255
        zero_point = torch.zeros(n, dtype=torch.int32)
        zero_point[1::2] = 255
        layer.set_weight(qweight, torch.full((n,), 1e-3), zero_point)
        x = torch.full((3, k), -1.0)
        x[1, ::3] = 0.0
        expected = canonical_pipeline(layer, x)
        acc = (K.quantize(x, layer.input_scale, layer.input_zero_point, None, torch.uint8).double() - 255) @ \
            (qweight.double() - zero_point.double()[:, None]).T
        assert float(acc.abs().max()) == 255.0 * 255.0 * k
        for path, y in outputs_on_every_path(layer, x).items():
            assert_bits_equal(y, expected)


@requires_c
def test_results_do_not_depend_on_the_thread_count():
    layer = make(1100, 96)  # enough tiles for several chunks per thread
    x = torch.randn(37, 96)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = layer(x)
        torch.set_num_threads(max(2, before))
        with torch.no_grad():
            many = layer(x)
    finally:
        torch.set_num_threads(before)
    assert_bits_equal(one, many)


def test_leading_dimensions_and_empty_batches():
    layer = make(8, 64)
    with torch.no_grad():
        assert layer(torch.randn(2, 3, 64)).shape == (2, 3, 8)
        assert layer(torch.randn(0, 64)).shape == (0, 8)
        x = torch.randn(4, 128)[:, ::2]  # not contiguous
        assert_bits_equal(layer(x), layer(x.contiguous()))


def test_the_older_canonical_operator_still_computes_the_same():
    """Programs traced before the weight was packed call mono_quant::linear_static with the
    canonical tensors; it stays registered and agrees with the layer."""
    layer = make(24, 48)
    w = layer.canonical_weight()
    x = torch.randn(5, 48)
    with torch.no_grad():
        old = torch.ops.mono_quant.linear_static(x, layer.input_scale, layer.input_zero_point, False,
                                                 w["qweight"], w["scale"], w["zero_point"], layer.bias)
        assert_bits_equal(old, layer(x))


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", ["c", "reference"])
def test_bad_inputs_and_values_are_refused(backend_name):
    if backend_name == "c" and not K.c_available():
        pytest.skip("C extension not built")
    layer = make(8, 64)
    odd = make(8, 69)  # a row tail shorter than one SIMD register
    with K.use_backend(backend_name), torch.no_grad():
        for isa in isas() if backend_name == "c" else ["auto"]:
            with K.use_linear_isa(isa) if backend_name == "c" else K.use_backend("reference"):
                for at, value in ((3, float("nan")), (40, float("inf")), (68, float("-inf"))):
                    x = torch.randn(2, 69)
                    x[1, at] = value
                    with pytest.raises(ValueError, match="NaN or Inf"):
                        odd(x)
                    with pytest.raises(ValueError, match="NaN or Inf"):
                        layer(x[:, :64].contiguous()) if at < 64 else odd(x.half())
        with pytest.raises(ValueError, match="in_features=64|same K"):
            layer(torch.randn(2, 32))
        huge = copy.deepcopy(layer)
        huge.scale = torch.full((8,), 10.0)
        huge.input_scale = torch.tensor([3e38])  # times a weight scale: overflows float32
        with pytest.raises(ValueError, match="finite"):
            huge(torch.randn(2, 64))
        inf_bias = copy.deepcopy(layer)
        inf_bias.bias = torch.full((8,), float("inf"))
        with pytest.raises(ValueError, match="bias"):
            inf_bias(torch.randn(2, 64))


@requires_c
def test_a_packed_weight_of_another_shape_is_refused():
    layer = make(8, 64)
    other = make(8, 96)
    with pytest.raises(ValueError, match="does not hold a packed static INT8 weight.*pack_linear_static"):
        K.linear_static_packed(torch.randn(2, 64), 0.02, 128, False, other.packed, 8, 64, None)
    int8_only = K.pack_linear_int8(*layer.canonical_weight().values())  # the dynamic layout lacks the sums
    with pytest.raises(ValueError, match="does not hold a packed static INT8 weight"):
        K.linear_static_packed(torch.randn(2, 64), 0.02, 128, False, int8_only, 8, 64, None)


# ---- storage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_c_packer_writes_the_reference_bytes(symmetric):
    if not K.c_available():
        pytest.skip("C extension not built")
    for n, k in ((1, 1), (17, 33), (40, 64), (3, 100)):
        layer = make(n, k, symmetric=symmetric)
        w = layer.canonical_weight()
        c = K.pack_linear_static(w["qweight"], w["scale"], w["zero_point"])
        r = ref.pack_linear_static(w["qweight"], w["scale"], w["zero_point"])
        assert torch.equal(c, r)
        assert c.numel() == ref.linear_static_packed_size(n, k)
        # the first part is the dynamic INT8 layout, byte for byte
        assert torch.equal(c[: ref.linear_int8_packed_size(n, k)], K.pack_linear_int8(w["qweight"], w["scale"],
                                                                                        w["zero_point"]))


def test_state_dict_keeps_the_canonical_layout():
    linear = nn.Linear(40, 24)
    layer = StaticQuantizedLinear.from_float(linear, input_range=(-2.0, 3.0))
    q, scale, zp = mono_quant._int8.quantize_weight_int8(linear.weight, symmetric=True, per_channel=True)
    state = layer.state_dict()
    assert list(state) == ["qweight", "scale", "zero_point", "bias", "input_scale", "input_zero_point"]
    assert torch.equal(state["qweight"], q) and torch.equal(state["scale"], scale)
    assert torch.equal(state["zero_point"], zp) and torch.equal(state["bias"], linear.bias.detach())
    assert "packed" not in state and layer.packed.numel() == ref.linear_static_packed_size(24, 40)
    # a fresh layer loads it and computes the same
    fresh = StaticQuantizedLinear(40, 24)
    fresh.load_state_dict(state)
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert_bits_equal(fresh(x), layer(x))
        assert_bits_equal(copy.deepcopy(layer)(x), layer(x))


def test_weight_attributes_are_read_only_copies_and_assignment_repacks():
    layer = make(16, 32)
    x = torch.randn(2, 32)
    with pytest.raises(RuntimeError, match="computed from the packed weight"):
        layer.scale.mul_(2)
    with torch.no_grad():
        before = layer(x)
        layer.scale = layer.scale * 2  # repacks
        after = layer(x)
    assert not torch.equal(before, after)
    assert_bits_equal(after, canonical_pipeline(layer, x))


def test_meta_device_and_moves():
    meta = StaticQuantizedLinear(64, 32, device="meta")
    assert meta.packed.is_meta and meta.qweight.is_meta and meta.qweight.shape == (32, 64)
    layer = make(32, 64)
    moved = copy.deepcopy(layer).to(torch.float64)  # .to(dtype) moves floating buffers only
    assert moved.packed.dtype == torch.uint8
    with torch.no_grad():
        y = moved(torch.randn(2, 64, dtype=torch.float64))  # float64: the torch pipeline
    assert y.dtype == torch.float64
