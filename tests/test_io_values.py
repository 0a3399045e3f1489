"""Files whose values break their layer format (a scale set to NaN, 0, a negative number or inf,
a zero point outside its range) with the CRC-32 recomputed, so only the value check can catch
them: loading (both formats, both layouts) and quantize_checkpoint's reader raise
CorruptFileError naming the file and the tensor; saving such a model is refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mono_quant import CorruptFileError, dynamic_quantize, load_quantized, quantize_checkpoint, save_quantized
from mono_quant.formats import RangeProblem, get_format

from io_helpers import checkpoint_state, int4_quantize_linears, rewrite_tensors

INT32_MAX = 2**31 - 1


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))


def skeleton() -> nn.Module:
    with torch.device("meta"):
        return factory()


def int8_file(suffix: str, layout: str = "module", **options) -> Path:
    source = factory() if layout == "module" else factory().state_dict()
    qmodel, info = dynamic_quantize(source, "int8", min_params=0, validate=False, **options)
    return save_quantized(qmodel, f"int8-{layout}{suffix}", info)


def int4_file(suffix: str, symmetric: bool = True) -> Path:
    model = int4_quantize_linears(factory(), group_size=32, symmetric=symmetric)
    return save_quantized(model, f"int4{suffix}")


def static_file(suffix: str, activation_symmetric: bool = False) -> Path:
    from mono_quant import static_quantize

    data = [torch.randn(4, 32) for _ in range(3)]
    qmodel, info = static_quantize(factory(), data, min_params=0, progress=False,
                                   activation_symmetric=activation_symmetric)
    return save_quantized(qmodel, f"static{suffix}", info)


def setter(key: str, index, value):
    def edit(tensors):
        tensors[key][index] = value
    return edit


def assert_rejected(path: Path, tensor: str, message: str, model: bool = True) -> None:
    with pytest.raises(CorruptFileError, match=message) as caught:
        load_quantized(path, skeleton() if model else None)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and f"tensor {tensor!r}" in text, text


NAN, INF = float("nan"), float("inf")
INT8_CASES = {
    "scale-nan": (setter("0.scale", 3, NAN), "0.scale", "1 non-finite value"),
    "scale-inf": (setter("0.scale", 0, INF), "0.scale", "1 non-finite value"),
    "scale-zero": (setter("2.scale", 1, 0.0), "2.scale", r"1 value\(s\) <= 0 \(min 0\)"),
    "scale-negative": (setter("0.scale", 2, -0.5), "0.scale", r"<= 0 \(min -0.5\)"),
    "zero-point-int32-max": (setter("0.zero_point", 0, INT32_MAX), "0.zero_point",
                             rf"values in \[0, {INT32_MAX}\], outside \[-128, 127\]"),
    "symmetric-zero-point-not-0": (setter("2.zero_point", 0, 3), "2.zero_point", "symmetric int8 needs 0"),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", INT8_CASES)
def test_int8_values_out_of_range(case, suffix):
    edit, tensor, message = INT8_CASES[case]
    path = int8_file(suffix)
    rewrite_tensors(path, edit)
    assert_rejected(path, tensor, message)
    assert_rejected(path, tensor, message, model=False)


def test_asymmetric_and_per_tensor_int8():
    path = int8_file(".safetensors", symmetric=False)
    rewrite_tensors(path, setter("0.zero_point", 1, 256))
    assert_rejected(path, "0.zero_point", r"outside \[0, 255\]")
    path = int8_file(".safetensors", symmetric=False)
    rewrite_tensors(path, setter("0.zero_point", 1, -1))
    assert_rejected(path, "0.zero_point", r"outside \[0, 255\]")
    path = int8_file(".safetensors", per_channel=False)
    rewrite_tensors(path, setter("2.scale", 0, 0.125))
    assert_rejected(path, "2.scale", "per-tensor quantization stores one value repeated")


def test_state_dict_layout_names_the_file_key():
    path = int8_file(".safetensors", layout="state_dict")
    rewrite_tensors(path, setter("0.weight_scale", 0, NAN))
    assert_rejected(path, "0.weight_scale", "non-finite", model=False)
    path = int8_file(".pt", layout="state_dict")
    rewrite_tensors(path, setter("2.weight_zero_point", 0, -INT32_MAX))
    assert_rejected(path, "2.weight_zero_point", "outside", model=False)


INT4_CASES = {
    "scale-nan": (setter("0.scale", (0, 0), NAN), "0.scale", "non-finite"),
    "scale-inf": (setter("0.scale", (1, 0), INF), "0.scale", "non-finite"),
    "scale-zero": (setter("0.scale", (2, 0), 0.0), "0.scale", "<= 0"),
    "scale-negative": (setter("0.scale", (2, 0), -1.0), "0.scale", "<= 0"),
    "zero-point-16": (setter("0.zero_point", (0, 0), 16), "0.zero_point", r"outside \[0, 15\]"),
    "symmetric-zero-point-not-8": (setter("0.zero_point", (0, 0), 7), "0.zero_point", "symmetric int4 needs 8"),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", INT4_CASES)
def test_int4_values_out_of_range(case, suffix):
    edit, tensor, message = INT4_CASES[case]
    path = int4_file(suffix)
    rewrite_tensors(path, edit)
    with pytest.raises(CorruptFileError, match=message) as caught:
        load_quantized(path, nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4)))
    assert str(caught.value).startswith(f"{path}: ") and f"tensor {tensor!r}" in str(caught.value)


def test_asymmetric_int4_takes_any_zero_point_up_to_15():
    path = int4_file(".safetensors", symmetric=False)
    rewrite_tensors(path, setter("0.zero_point", (0, 0), 15))
    tensors, _ = load_quantized(path)
    assert int(tensors["0.zero_point"][0, 0]) == 15


STATIC_CASES = {
    "input-scale-nan": (False, setter("0.input_scale", 0, NAN), "0.input_scale", "non-finite"),
    "input-scale-zero": (False, setter("0.input_scale", 0, 0.0), "0.input_scale", "<= 0"),
    "input-zero-point-uint8": (False, setter("0.input_zero_point", 0, 256), "0.input_zero_point",
                               r"outside \[0, 255\]"),
    "input-zero-point-symmetric": (True, setter("2.input_zero_point", 0, 1), "2.input_zero_point",
                                   r"symmetric \(int8\) inputs needs 0"),
    "scale-product-overflows": (False, lambda t: (t["0.input_scale"].fill_(1e30), t["0.scale"].fill_(1e10)),
                                "0.input_scale", "overflows float32"),
    "bias-nan": (False, setter("2.bias", 0, NAN), "2.bias", "non-finite"),
}


@pytest.mark.parametrize("case", STATIC_CASES)
def test_static_values_out_of_range(case):
    symmetric, edit, tensor, message = STATIC_CASES[case]
    path = static_file(".safetensors", activation_symmetric=symmetric)
    rewrite_tensors(path, edit)
    assert_rejected(path, tensor, message)


def test_the_skeleton_is_untouched_when_values_are_rejected():
    path = int8_file(".safetensors")
    rewrite_tensors(path, setter("2.scale", 0, -1.0))
    model = factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CorruptFileError, match="'2.scale'"):
        load_quantized(path, model)
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_saving_refuses_values_the_format_does_not_allow():
    # A state_dict: its canonical tensors are what a file holds, whatever the modules keep inside.
    qsd, info = dynamic_quantize(factory().state_dict(), "int8", min_params=0, validate=False)
    qsd["0.weight_scale"][0] = math.nan
    with pytest.raises(ValueError, match="cannot save: layer '0' .*tensor '0.weight_scale' has 1 non-finite value") \
            as caught:
        save_quantized(qsd, "bad.safetensors", info)
    assert not isinstance(caught.value, CorruptFileError)
    assert not Path("bad.safetensors").exists() and not Path("bad.safetensors.partial").exists()


def test_every_built_in_format_reports_problems_by_tensor():
    problems = get_format("int4_linear").range_problems(
        {"symmetric": True}, {"scale": torch.tensor([[1.0, -1.0]], dtype=torch.float16),
                              "zero_point": torch.full((1, 2), 8, dtype=torch.uint8)})
    assert problems == [RangeProblem("scale", "has 1 value(s) <= 0 (min -1)")]
    assert str(problems[0]) == "scale has 1 value(s) <= 0 (min -1)"


def test_quantize_checkpoint_checks_layers_it_passes_through():
    """A source that already holds a quantized layer (weight_scale / weight_zero_point) is passed
    through as it is, so its values are checked like a loaded file's."""
    state = checkpoint_state()
    qsd, _ = dynamic_quantize({"model.extra.weight": torch.randn(16, 32)}, "int8", min_params=0, validate=False)
    qsd["model.extra.weight_scale"][3] = -2.0
    save_file({**state, **qsd}, "model.safetensors")
    with pytest.raises(CorruptFileError, match="model.safetensors: layer 'model.extra' .*tensor "
                                               r"'model.extra.weight_scale' has 1 value\(s\) <= 0"):
        quantize_checkpoint("model.safetensors", "out.safetensors", "int8")
    assert not Path("out.safetensors").exists()
    torch.save({**state, **qsd}, "model.pt")
    with pytest.raises(CorruptFileError, match="model.pt: layer 'model.extra' .*'model.extra.weight_scale'"):
        quantize_checkpoint("model.pt", "out.safetensors", "int8")
    qsd["model.extra.weight_scale"][3] = 2.0  # a valid already-quantized layer goes through
    save_file({**state, **qsd}, "model.safetensors")
    quantize_checkpoint("model.safetensors", "out.safetensors", "int8")
    tensors, meta = load_quantized("out.safetensors")
    assert torch.equal(tensors["model.extra.weight"], qsd["model.extra.weight"]) and "model.extra" in meta["layers"]


def test_quantize_checkpoint_refuses_a_layer_whose_tensors_do_not_fit():
    """A bias that does not match its weight made a file that its own loader refused."""
    state = {"fc.weight": torch.randn(16, 32), "fc.bias": torch.randn(8)}
    torch.save(state, "model.pt")
    with pytest.raises(CorruptFileError, match=r"model.pt: layer 'fc' \(int8_linear\): tensor 'fc.bias' has shape "
                                               r"\[8\], expected \[16\]; the checkpoint's tensors of this layer"):
        quantize_checkpoint("model.pt", "out.safetensors", "int8", min_params=0)
    assert not Path("out.safetensors").exists()
