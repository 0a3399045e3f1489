"""The ``mono-quant`` command (also ``python -m mono_quant``).

    mono-quant quantize SRC DST --dtype int4 [--group-size 128] [--skip lm_head] [--config FILE] [--jobs N]
    mono-quant inspect FILE
    mono-quant validate FILE [--original SRC] [--min-sqnr 10]
    mono-quant playground [--model PATH] [--dtype int4] [--port N] [--headless]
    mono-quant --version

Exit codes: 0 success, 1 a check failed or the command could not finish, 2 wrong usage.
Errors go to stderr as one line that says what to do.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from .config import DTYPES, GROUP_SIZES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "mono-quant"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2) instead of the usage block."""

    def error(self, message: str):  # noqa: D401 (argparse hook)
        raise _UsageError(f"{self.prog}: error: {message}; see `{self.prog} --help`")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    >>> main(["inspect", "model.safetensors"])
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (OSError, ValueError, TypeError, RuntimeError, ModuleNotFoundError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename:
            message = f"{exc.filename}: no such file; check the path"
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Quantize, inspect and validate PyTorch checkpoints with mono_quant.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the versions of mono_quant and torch, then exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    quantize = commands.add_parser(
        "quantize", help="quantize a checkpoint file, one layer in memory at a time",
        description="Quantize the weights of a checkpoint without building the model. SRC is a .safetensors "
                    "file, a *.safetensors.index.json of a sharded set, a folder holding either, or a .pt/.bin "
                    "state_dict (loaded whole). DST is a .safetensors file (written one tensor at a time), .pt, "
                    "or a folder (a path without a suffix): one quantized shard per source shard plus "
                    "model.safetensors.index.json, and, for a transformers checkpoint, its config.json with a "
                    "quantization_config and its other files, ready for from_pretrained. "
                    "Options not given come from --config, then ./mono_quant.toml, then the defaults.")
    quantize.add_argument("src", metavar="SRC", help="the float checkpoint")
    quantize.add_argument("dst", metavar="DST",
                          help="the quantized file to write (.safetensors or .pt), or a folder for a sharded output")
    quantize.add_argument("--dtype", choices=DTYPES, help="weight format (default: int8)")
    quantize.add_argument("--group-size", type=int, choices=GROUP_SIZES, metavar="N",
                          help=f"int4 group size: {', '.join(map(str, GROUP_SIZES))} (default: 128)")
    quantize.add_argument("--skip", nargs="+", action="extend", metavar="NAME",
                          help="layer names or patterns kept in float (e.g. lm_head 'encoder.*')")
    quantize.add_argument("--min-params", type=_count, metavar="N", help="layers with fewer parameters stay float")
    quantize.add_argument("--asymmetric", action="store_const", const=False, dest="symmetric",
                          help="use zero points (uint8) instead of symmetric int8")
    quantize.add_argument("--quantize-embeddings", action="store_const", const=True, dest="quantize_embeddings",
                          help="also store embedding tables (2-D weights whose layer name contains 'embed') as INT8 "
                               "per row")
    quantize.add_argument("--config", metavar="FILE", help="a mono_quant.toml or pyproject.toml with options")
    quantize.add_argument("--jobs", type=_positive, default=1, metavar="N",
                          help="quantize N shards at once, each in its own process (folder output; default: 1)")
    quantize.add_argument("-q", "--quiet", action="store_true", help="print only the final line")
    quantize.set_defaults(run=_quantize)

    inspect = commands.add_parser(
        "inspect", help="list the layers of a saved file",
        description="Print a per-layer table of a file written by mono_quant (or any .safetensors file): shapes, "
                    "stored dtype, scheme, bytes and the SQNR recorded in the metadata. Reads only the header of "
                    ".safetensors files; .pt files are loaded whole.")
    inspect.add_argument("file", metavar="FILE")
    inspect.set_defaults(run=_inspect)

    validate = commands.add_parser(
        "validate", help="check a quantized file, optionally against its original",
        description="Check a quantized file without building the model: 'load' reads it back completely "
                    "(header, CRC-32 of every tensor, metadata, each layer's tensors against its record); "
                    "'range' checks quantized values, zero points and scales; 'sqnr' uses the SQNR recorded in "
                    "the file, or measures it against --original; 'size' compares stored bytes with --original, "
                    "or with the original shapes and dtypes the file records. Exit code 1 when a check fails.")
    validate.add_argument("file", metavar="FILE", help="the quantized .safetensors or .pt file")
    validate.add_argument("--original", metavar="SRC", help="the float checkpoint it was made from")
    validate.add_argument("--min-sqnr", type=_finite_float, default=10.0, metavar="DB",
                          help="lowest acceptable SQNR per layer in dB (default: 10)")
    validate.set_defaults(run=_validate)

    playground = commands.add_parser(
        "playground", help="open the quantization playground (a marimo app) in the browser",
        description="Serve the mono_quant playground, a marimo app: pick a model (the bundled MiniLM demo or a "
                    "checkpoint), a scheme and its options, and see the report, the plots and the output agreement "
                    "with the float model. Works offline. Needs: pip install 'mono_quant[playground]'.")
    _playground_arguments(playground)
    playground.set_defaults(run=_playground)
    return parser


def _playground_arguments(parser: argparse.ArgumentParser) -> None:
    from .playground.launch import add_arguments

    add_arguments(parser)


def _playground(args: argparse.Namespace) -> int:
    from .playground.launch import run

    return run(args)
def version_text() -> str:
    """"mono-quant 0.1.0 (torch 2.13.0+cpu, Linear kernel: avx512_vnni)" (on AMX CPUs
    "Linear kernel: amx, batch >= 16: amx"): what ``--version`` prints."""
    import torch

    from . import __version__, _kernels

    return f"{PROG} {__version__} (torch {torch.__version__}, Linear kernel: {_kernels.linear_path_text()})"


# Option types: argparse turns their ArgumentTypeError into "argument --x: <message>" (exit 2).
# Every numeric option has one (--group-size is an int among choices).


def _finite_float(text: str) -> float:
    """A finite number: "nan", "inf" and "1e999" would make every comparison meaningless."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def _positive(text: str) -> int:
    """An integer >= 1."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}")
    return value


def _count(text: str) -> int:
    """An integer >= 0 ("1e3", "nan" and "-1" are refused)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {text!r}")
    return value


def _quantize(args: argparse.Namespace) -> int:
    from .info import format_bytes
    from .streaming import quantize_checkpoint

    info = quantize_checkpoint(
        args.src, args.dst, args.dtype, config=args.config, group_size=args.group_size,
        modules_to_not_convert=args.skip, min_params=args.min_params, symmetric=args.symmetric, jobs=args.jobs,
        quantize_embeddings=args.quantize_embeddings,
    )
    if not args.quiet:
        print(info)
    if os.path.isdir(args.dst):
        size = sum(entry.stat().st_size for entry in os.scandir(args.dst) if entry.name.endswith(".safetensors"))
    else:
        size = os.path.getsize(args.dst)
    print(f"wrote {args.dst} ({format_bytes(size)}; weights {info.compression_ratio:.2f}x smaller, "
          f"{len(info.quantized)} of {len(info.layers)} layers quantized)")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    print(inspect_text(args.file))
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate_file

    report = validate_file(args.file, args.original, min_sqnr_db=args.min_sqnr)
    print(report)
    if not report.passed:
        print(f"{PROG} validate: {report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def inspect_text(path: str) -> str:
    """The text ``mono-quant inspect`` prints for ``path``."""
    from ._file_metadata import FORMAT_NAME
    from ._layers import dtype_name
    from .info import format_bytes, format_sqnr
    from .io import file_kind, read_metadata
    from .state_dict import split_key

    if file_kind(path) == "safetensors":
        from . import _safetensors as st
        from ._files import open_regular

        with open_regular(path) as handle:  # a FIFO or device is refused, never waited on
            header = st.read_header(handle, path)
        if header.metadata.get("format") != FORMAT_NAME:
            shapes = {n: (e.dtype, e.shape) for n, e in header.tensors.items()}
            return _plain_table(path, shapes)
    meta, shapes = read_metadata(path)
    groups: dict[str, list[str]] = {}
    for name in shapes:
        groups.setdefault(split_key(name)[0], []).append(name)
    rows = [("Layer", "Kind", "Shape", "Stored", "Scheme", "Bytes", "SQNR")]
    total = 0
    for prefix, names in groups.items():
        stored = [n for n in names if n not in meta.aliases]
        nbytes = sum(_nbytes(*shapes[n]) for n in stored)
        total += nbytes
        entry = meta.layers.get(prefix)
        main = next((n for n in names if split_key(n)[1] in ("qweight", "weight")), names[0])
        dtype, shape = shapes[main]
        if entry is None:
            kind, scheme, sqnr = "-", "-", "-"
        else:
            kind, scheme, sqnr = entry.kind, entry.scheme or "-", format_sqnr(entry.sqnr_db)
            shape = tuple(entry.params.get("original_shape", shape))
        tied = " (tied)" if len(stored) < len(names) else ""
        rows.append((prefix or "(root)", kind, "x".join(map(str, shape)) or "scalar", dtype_name(dtype), scheme,
                     format_bytes(nbytes) + tied, sqnr))
    values = meta.values
    lines = [
        f"{path}: mono_quant format {values.get('format_version')}, layout {values.get('layout')}, "
        f"written by mono_quant {values.get('mono_quant_version', '?')} / torch {values.get('torch_version', '?')}",
        f"model {values.get('model_class', '?')}; dtype {values.get('dtype', '?')}; scheme {values.get('scheme', '?')}"
        + (f"; group size {values['group_size']}" if values.get("group_size", "none") != "none" else ""),
        "",
        *_table(rows),
        f"Total: {format_bytes(total)} in {len(shapes) - len(meta.aliases)} tensors, "
        f"{len(meta.layers)} quantized layer(s)" + (f", {len(meta.aliases)} tied" if meta.aliases else ""),
    ]
    return "\n".join(lines)


def _plain_table(path: str, shapes) -> str:
    from ._layers import dtype_name
    from .info import format_bytes

    rows = [("Tensor", "Shape", "Dtype", "Bytes")]
    rows += [(n, "x".join(map(str, s)) or "scalar", dtype_name(d), format_bytes(_nbytes(d, s))) for n, (d, s) in shapes.items()]
    total = sum(_nbytes(d, s) for d, s in shapes.values())
    return "\n".join([f"{path}: not written by mono_quant (no format metadata); its tensors:", "", *_table(rows),
                      f"Total: {format_bytes(total)} in {len(shapes)} tensors"])


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _nbytes(dtype, shape) -> int:
    return math.prod(shape) * dtype.itemsize


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
