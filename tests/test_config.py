"""QuantizationConfig: validation, aliases, and option priority (kwargs > file > defaults)."""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib

import pytest
import torch
from torch import nn

from mono_quant import QuantizationConfig, dynamic_quantize
from mono_quant._config_file import find_config_file, read_config_file
from mono_quant.nn import QuantizedLinear


def test_defaults():
    cfg = QuantizationConfig()
    assert (cfg.dtype, cfg.symmetric, cfg.per_channel, cfg.group_size) == ("int8", True, True, 128)
    assert (cfg.scale_method, cfg.min_params, cfg.compute_sqnr) == ("mse", 512, True)
    assert cfg.modules_to_not_convert == cfg.layer_types == cfg.skip_types == ()
    assert cfg.layer_names == cfg.skip_names == ()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("int8", "int8"), ("INT8", "int8"), (torch.qint8, "int8"), (torch.int8, "int8"),
        ("int4", "int4"), (torch.quint4x2, "int4"),
        ("fp16", "fp16"), ("float16", "fp16"), (torch.float16, "fp16"),
    ],
)
def test_dtype_aliases_are_normalized(given, expected):
    assert QuantizationConfig(dtype=given).dtype == expected


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dtype": "int3"}, "dtype must be one of 'int8', 'int4', 'fp16'; got 'int3'"),
        ({"dtype": torch.float32}, "dtype must be one of 'int8', 'int4', 'fp16'; got torch.float32"),
        ({"group_size": 100}, "group_size must be one of 32, 64, 128, 256; got 100"),
        ({"group_size": 128.0}, "group_size must be one of 32, 64, 128, 256; got 128.0"),
        ({"scale_method": "minmax"}, "scale_method must be one of 'absmax', 'mse'; got 'minmax'"),
        ({"symmetric": "yes"}, "symmetric must be True or False; got 'yes'"),
        ({"per_channel": 1}, "per_channel must be True or False; got 1"),
        ({"min_params": -1}, "min_params must be an integer >= 0; got -1"),
        ({"modules_to_not_convert": ["lm_head", 3]}, "modules_to_not_convert must contain non-empty strings"),
        ({"skip_names": 5}, "skip_names must be a list of module names or patterns; got 5"),
        ({"layer_types": [int]}, "layer_types must contain nn.Module subclasses or class names"),
    ],
)
def test_invalid_values_name_the_valid_choices(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QuantizationConfig(**options)


def test_lists_become_tuples_and_single_values_are_wrapped():
    cfg = QuantizationConfig(
        modules_to_not_convert=["lm_head"], skip_names="head", layer_types=nn.Linear, skip_types=["Conv2d"]
    )
    assert cfg.modules_to_not_convert == ("lm_head",)
    assert cfg.skip_names == ("head",)
    assert cfg.layer_types == (nn.Linear,)
    assert cfg.skip_types == ("Conv2d",)
    hash(cfg)  # frozen and made of tuples: usable as a dict key


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantizationConfig().dtype = "fp16"


def test_replace_revalidates():
    with pytest.raises(ValueError, match="group_size"):
        dataclasses.replace(QuantizationConfig(), group_size=7)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_priority_kwargs_over_file_over_defaults(tmp_path):
    write(tmp_path / "mono_quant.toml", 'dtype = "fp16"\nmin_params = 64\nskip_names = ["head"]\n')
    cfg = QuantizationConfig.from_sources(min_params=8)
    assert cfg.min_params == 8  # keyword wins
    assert cfg.dtype == "fp16" and cfg.skip_names == ("head",)  # file wins over defaults
    assert cfg.symmetric is True and cfg.group_size == 128  # defaults fill the rest


def test_pyproject_tool_table_is_read(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.mono_quant]\nper-channel = false\n')
    assert QuantizationConfig.from_sources().per_channel is False


def test_pyproject_without_table_is_ignored(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert find_config_file() is None
    assert QuantizationConfig.from_sources() == QuantizationConfig()


def test_mono_quant_toml_wins_over_pyproject(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.mono_quant]\nmin_params = 1\n")
    write(tmp_path / "mono_quant.toml", "min_params = 2\n")
    assert QuantizationConfig.from_sources().min_params == 2


def test_explicit_path_replaces_the_cwd_file(tmp_path):
    write(tmp_path / "mono_quant.toml", "min_params = 1\n")
    other = write(tmp_path / "conf" / "fast.toml", 'dtype = "fp16"\n')
    cfg = QuantizationConfig.from_sources(config=str(other))
    assert cfg.dtype == "fp16" and cfg.min_params == 512
    project = write(tmp_path / "proj" / "pyproject.toml", "[tool.mono_quant]\nmin_params = 3\n")
    assert QuantizationConfig.from_sources(config=project).min_params == 3


def test_config_instance_and_dict(tmp_path):
    write(tmp_path / "mono_quant.toml", "min_params = 1\n")
    base = QuantizationConfig(symmetric=False)
    assert QuantizationConfig.from_sources(base) is base
    cfg = QuantizationConfig.from_sources(base, per_channel=False)
    assert (cfg.symmetric, cfg.per_channel, cfg.min_params) == (False, False, 512)
    assert QuantizationConfig.from_sources({"min_params": 5}, dtype=torch.qint8).min_params == 5


def test_unknown_key_in_file_names_valid_keys(tmp_path):
    write(tmp_path / "mono_quant.toml", 'dtype = "int8"\ncolour = "blue"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'colour' in .*mono_quant.toml; valid keys: dtype, symmetric"):
        QuantizationConfig.from_sources()


def test_bad_value_in_file_names_the_file(tmp_path):
    write(tmp_path / "mono_quant.toml", "group_size = 100\n")
    with pytest.raises(ValueError, match=r"in .*mono_quant.toml: group_size must be one of 32, 64, 128, 256"):
        QuantizationConfig.from_sources()


def test_unknown_option_is_a_type_error_listing_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'colour'; valid options: dtype, symmetric, per_channel"):
        QuantizationConfig.from_sources(colour="blue")


def test_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the path of a mono_quant.toml"):
        QuantizationConfig.from_sources(config=tmp_path / "missing.toml")
    bare = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"has no \[tool.mono_quant\] table"):
        QuantizationConfig.from_sources(config=bare)
    broken = write(tmp_path / "broken.toml", "dtype = \n")
    with pytest.raises(ValueError, match="could not parse"):
        QuantizationConfig.from_sources(config=broken)
    with pytest.raises(TypeError, match="config must be a QuantizationConfig"):
        QuantizationConfig.from_sources(config=42)


def test_falls_back_to_tomli_then_explains(tmp_path, monkeypatch):
    path = write(tmp_path / "mono_quant.toml", "min_params = 7\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli has the same API
    assert read_config_file(path) == {"min_params": 7}
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ModuleNotFoundError, match="pip install tomli"):
        read_config_file(path)


def test_dynamic_quantize_uses_the_priority(tmp_path):
    model = nn.Sequential(nn.Linear(16, 16))  # 272 parameters: below the default min_params
    assert "0" in dynamic_quantize(model)[1].skipped
    write(tmp_path / "mono_quant.toml", "min_params = 0\n")
    qmodel, info = dynamic_quantize(model)
    assert isinstance(qmodel[0], QuantizedLinear) and not info.skipped
    assert "0" in dynamic_quantize(model, min_params=1000)[1].skipped
    half, _ = dynamic_quantize(model, torch.float16, config={"min_params": 0})
    assert half[0].weight.dtype == torch.float16


# ---- symmetric: each format's own default; GPTQ and mixed precision options ----------------------

def test_symmetric_defaults_to_the_formats_own_choice():
    assert QuantizationConfig().symmetric is True and QuantizationConfig(dtype="int4").symmetric is False
    assert not QuantizationConfig(dtype="int4").symmetric_given
    assert QuantizationConfig(dtype="int4", symmetric=True).symmetric is True
    # a dtype given later (keyword over a config / file) picks its own default, unless symmetric was set
    assert QuantizationConfig.from_sources({"min_params": 0}, dtype="int4").symmetric is False
    assert QuantizationConfig.from_sources(QuantizationConfig(dtype="int4"), dtype="int8").symmetric is True
    assert QuantizationConfig.from_sources({"symmetric": True}, dtype="int4").symmetric is True
    assert QuantizationConfig.from_sources({"dtype": "int4"}, symmetric=True).symmetric_given


def test_gptq_option_defaults_and_file_keys(tmp_path):
    cfg = QuantizationConfig()
    assert (cfg.damp, cfg.act_order, cfg.sequential, cfg.max_bits_per_weight, cfg.sensitivity_samples) == (
        0.01, True, False, None, 32)
    (tmp_path / "mono_quant.toml").write_text(
        'dtype = "int4"\ndamp = 0.1\nact-order = false\nsequential = true\nmax_bits_per_weight = 4.6\n'
        "sensitivity_samples = 8\n")
    cfg = QuantizationConfig.from_sources(tmp_path / "mono_quant.toml")
    assert (cfg.damp, cfg.act_order, cfg.sequential, cfg.max_bits_per_weight, cfg.sensitivity_samples) == (
        0.1, False, True, 4.6, 8)
    assert isinstance(QuantizationConfig(damp=0, max_bits_per_weight=5).damp, float)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"damp": -0.1}, "damp must be a number from 0 to 1"),
        ({"damp": float("nan")}, "damp must be a number from 0 to 1"),
        ({"damp": True}, "damp must be a number from 0 to 1"),
        ({"act_order": "yes"}, "act_order must be True or False; got 'yes'"),
        ({"sequential": 1}, "sequential must be True or False; got 1"),
        ({"max_bits_per_weight": 0.5}, "max_bits_per_weight must be None or a number of bits from 1 to 32"),
        ({"max_bits_per_weight": float("inf")}, "max_bits_per_weight must be None or a number of bits"),
        ({"max_bits_per_weight": "4.6"}, "max_bits_per_weight must be None or a number of bits"),
        ({"sensitivity_samples": 0}, "sensitivity_samples must be an integer >= 1; got 0"),
    ],
)
def test_gptq_options_are_validated(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QuantizationConfig(**options)
