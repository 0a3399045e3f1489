"""The mono-quant command: exit codes 0 / 1 / 2, one-line errors on stderr, the three commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mono_quant import dynamic_quantize, save_quantized
from mono_quant.cli import main

from helpers import make_mlp
from io_helpers import checkpoint_state

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def checkpoint() -> Path:
    save_file(checkpoint_state(), "model.safetensors")
    return Path("model.safetensors")


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_quantize_inspect_validate(capsys, checkpoint):
    code, out, err = run(capsys, "quantize", "model.safetensors", "q.safetensors", "--dtype", "int8",
                         "--skip", "lm_head", "model.layers.1.*")
    assert code == 0 and err == ""
    assert "model.layers.0.mlp.up" in out and "listed in modules_to_not_convert ('lm_head')" in out
    assert out.splitlines()[-1].startswith("wrote q.safetensors (")
    qsd, _ = dynamic_quantize(load_file("model.safetensors"), modules_to_not_convert=["lm_head", "model.layers.1.*"])
    got = load_file("q.safetensors")
    assert got.keys() == qsd.keys() and all(torch.equal(got[k], qsd[k]) for k in qsd)

    code, out, err = run(capsys, "inspect", "q.safetensors")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("q.safetensors: mono_quant format 1, layout state_dict")
    assert "dtype int8; scheme int8 per-channel symmetric" in lines[1]
    up = next(line for line in lines if line.startswith("model.layers.0.mlp.up "))
    assert up.split()[1:5] == ["int8_linear", "128x32", "int8", "int8"] and "dB" in up
    head = next(line for line in lines if line.startswith("lm_head "))
    assert head.split()[1:4] == ["-", "64x32", "float32"]

    code, out, err = run(capsys, "validate", "q.safetensors", "--original", "model.safetensors")
    assert code == 0 and err == "" and out.endswith("Validation passed\n")


def test_quantize_options_and_config(capsys, checkpoint):
    Path("q.toml").write_text('symmetric = false\nmin_params = 100000\n')
    code, out, _ = run(capsys, "quantize", "model.safetensors", "q.pt", "--config", "q.toml", "--min-params", "0",
                       "--dtype", "int8", "-q")
    assert code == 0 and out.count("\n") == 1  # --quiet: only the last line
    from mono_quant import load_quantized

    tensors, meta = load_quantized("q.pt")
    assert tensors["model.layers.0.norm.weight"].dtype == torch.float32  # 1-D stays float
    assert tensors["model.layers.0.attn.q_proj.weight"].dtype == torch.uint8  # from the config file
    assert "model.layers.0.attn.q_proj" in meta["layers"]  # --min-params 0 beat the config's 100000


def test_inspect_other_files(capsys, checkpoint):
    code, out, _ = run(capsys, "inspect", "model.safetensors")
    conv = next(line for line in out.splitlines() if line.startswith("model.conv.weight "))
    assert code == 0 and "not written by mono_quant" in out and conv.split()[1:3] == ["16x8x3x3", "float32"]
    qmodel, info = dynamic_quantize(make_mlp())
    save_quantized(qmodel, "m.pt", info)
    code, out, _ = run(capsys, "inspect", "m.pt")
    assert code == 0 and "layout module" in out and "torch.nn.modules.container.Sequential" in out


def test_validate_failure_is_exit_code_1(capsys):
    qmodel, info = dynamic_quantize(make_mlp())
    save_quantized(qmodel, "m.safetensors", info)
    code, out, err = run(capsys, "validate", "m.safetensors", "--min-sqnr", "90")
    assert code == 1 and "sqnr   FAILED" in out and out.endswith("Validation FAILED\n")
    assert_one_line_error(err, "mono-quant validate: sqnr check failed: 2 layer(s) below 90 dB")
    data = bytearray(Path("m.safetensors").read_bytes())
    data[-1] ^= 1
    Path("m.safetensors").write_bytes(bytes(data))
    code, out, err = run(capsys, "validate", "m.safetensors")
    assert code == 1 and "load   FAILED" in out
    assert_one_line_error(err, "load check failed", "CRC-32")


RUNTIME_ERRORS = {
    "missing-source": (["quantize", "nope.safetensors", "q.safetensors"], "nope.safetensors: no such file", "check the path"),
    "bad-destination": (["quantize", "model.safetensors", "q.gguf"], "use a path ending in .safetensors or .pt"),
    "corrupt-source": (["quantize", "broken.safetensors", "q.safetensors"], "broken.safetensors: ", "truncated"),
    "missing-file": (["inspect", "gone.pt"], "gone.pt: no such file; check the path"),
    "missing-folder": (["quantize", "model.safetensors", "new/q.safetensors"], "the folder", "does not exist; create it"),
    "bad-config": (["quantize", "model.safetensors", "q.safetensors", "--config", "bad.toml"],
                   "unknown key(s) 'colour' in bad.toml; valid keys: dtype"),
}


@pytest.mark.parametrize("case", RUNTIME_ERRORS)
def test_runtime_errors_are_exit_code_1_and_one_line(capsys, checkpoint, case):
    argv, *fragments = RUNTIME_ERRORS[case]
    Path("broken.safetensors").write_bytes(checkpoint.read_bytes()[:100])
    Path("bad.toml").write_text('colour = "blue"\n')
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"mono-quant {argv[0]}: error: ", *fragments)


USAGE_ERRORS = {
    "no-command": ([], "mono-quant: error: the following arguments are required: COMMAND; see `mono-quant --help`"),
    "unknown-command": (["shrink"], "invalid choice: 'shrink'"),
    "bad-dtype": (["quantize", "a.safetensors", "b.safetensors", "--dtype", "int3"],
                  "argument --dtype: invalid choice: 'int3' (choose from 'int8', 'int4', 'fp16'); "
                  "see `mono-quant quantize --help`"),
    "bad-group-size": (["quantize", "a", "b", "--group-size", "100"], "argument --group-size: invalid choice: 100"),
    "missing-dst": (["quantize", "a.safetensors"], "the following arguments are required: DST"),
    "not-a-number": (["validate", "x.pt", "--min-sqnr", "lots"], "argument --min-sqnr: invalid float value: 'lots'"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors_are_exit_code_2_and_one_line(capsys, case):
    argv, fragment = USAGE_ERRORS[case]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment, "--help`")


@pytest.mark.parametrize("argv", [["--help"], ["quantize", "--help"], ["inspect", "-h"], ["validate", "--help"]])
def test_help_everywhere(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0 and out.startswith("usage: mono-quant") and err == ""


def test_python_dash_m_in_a_subprocess(checkpoint):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mono_quant", "quantize", "model.safetensors", "q.safetensors",
                           "--dtype", "fp16", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote q.safetensors") and load_file("q.safetensors")["lm_head.weight"].dtype == torch.float16
    done = subprocess.run([sys.executable, "-m", "mono_quant", "validate"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1


def test_console_script_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mono-quant"] == "mono_quant.cli:main"


NUMERIC_OPTIONS = {  # every numeric option, with values it must refuse (NaN, infinities, out of range)
    "--min-sqnr": (["validate", "x.pt"], ["nan", "NaN", "inf", "-inf", "1e999", "lots"],
                   "argument --min-sqnr: (must be a finite number|invalid float value)"),
    "--min-params": (["quantize", "a.safetensors", "b.safetensors"], ["nan", "inf", "-1", "1.5", "1e3", "many"],
                     "argument --min-params: (must be an integer >= 0|invalid int value)"),
    "--group-size": (["quantize", "a.safetensors", "b.safetensors"], ["nan", "inf", "-128", "0", "100", "128.0"],
                     "argument --group-size: (invalid choice|invalid int value)"),
}


@pytest.mark.parametrize("option", NUMERIC_OPTIONS)
def test_numeric_options_refuse_nan_infinities_and_out_of_range_values(capsys, option):
    import re

    command, values, pattern = NUMERIC_OPTIONS[option]
    for value in values:
        code, out, err = run(capsys, *command, f"{option}={value}")  # "-inf" alone would look like an option
        assert code == 2 and out == "" and err.count("\n") == 1 and re.search(pattern, err), (value, err)
        assert repr(value) in err or value in err, err


def test_numeric_options_take_their_valid_values(capsys):
    from mono_quant.cli import build_parser

    args = build_parser().parse_args(["validate", "x.pt", "--min-sqnr", "-3.5"])
    assert args.min_sqnr == -3.5
    args = build_parser().parse_args(["quantize", "a", "b", "--min-params", "0", "--group-size", "64"])
    assert args.min_params == 0 and args.group_size == 64
