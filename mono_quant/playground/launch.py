"""Start the playground: ``marimo run`` on the app shipped in this package.

    mono-quant playground                      # opens a browser on the bundled MiniLM demo
    mono-quant playground --model model.safetensors --port 2718 --headless
    python -m mono_quant.playground --help
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

NEEDS = {"marimo": "marimo", "matplotlib": "matplotlib"}
INSTALL = "pip install 'mono_quant[playground]'"


def app_path() -> Path:
    """The marimo app file (run it with ``marimo run``, or copy it and ``marimo edit`` the copy).

    >>> app_path().name
    'app.py'
    """
    return Path(__file__).with_name("app.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The playground's options (shared by ``mono-quant playground`` and ``python -m``)."""
    parser.add_argument("--model", metavar="PATH", default="minilm",
                        help="'minilm' (the bundled all-MiniLM-L6-v2, the default) or a checkpoint: a .safetensors "
                             "file, an index, a folder, or a .pt / .bin state_dict")
    parser.add_argument("--dtype", choices=("int8", "int4", "fp16"), default="int8",
                        help="the scheme shown first (default: int8)")
    parser.add_argument("--port", type=_port, metavar="N", help="port to serve on (default: marimo's, 2718)")
    parser.add_argument("--host", metavar="HOST", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser; print the address instead")


def command(model: str = "minilm", dtype: str = "int8", *, port: int | None = None, host: str | None = None,
            headless: bool = False, app: str | os.PathLike[str] | None = None) -> list[str]:
    """The ``marimo run`` command line that serves the playground (``app``: a copy of
    ``app_path()``, which is the default).

    >>> command(port=2718, headless=True)[-8:]
    ['--port', '2718', '--headless', '--', '--model', 'minilm', '--dtype', 'int8']
    """
    cmd = [sys.executable, "-m", "marimo", "run", os.fspath(app or app_path())]
    if port is not None:
        cmd += ["--port", str(port)]
    if host:
        cmd += ["--host", host]
    if headless:
        cmd.append("--headless")
    return cmd + ["--", "--model", model, "--dtype", dtype]


def missing_packages() -> list[str]:
    """The packages the playground needs that are not installed."""
    return [pip for module, pip in NEEDS.items() if importlib.util.find_spec(module) is None]


def run(args: argparse.Namespace) -> int:
    """Serve the playground until interrupted; returns marimo's exit code."""
    missing = missing_packages()
    if missing:
        raise ModuleNotFoundError(f"the playground needs {', '.join(missing)}, which "
                                  f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}")
    if args.model.strip().lower() != "minilm" and not os.path.lexists(os.path.expanduser(args.model)):
        raise FileNotFoundError(None, None, args.model)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the demo model is bundled: never reach for a hub
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # marimo keeps a session cache next to the app it runs: run a copy, so nothing is ever
    # written into the installed package.
    folder = tempfile.mkdtemp(prefix="mono_quant_playground_")
    stop = _stop_on_sigterm()
    try:
        app = shutil.copy(app_path(), folder)
        cmd = command(args.model, args.dtype, port=args.port, host=args.host, headless=args.headless, app=app)
        return subprocess.call(cmd, env=env)  # on an exception it kills marimo before re-raising
    except KeyboardInterrupt:  # marimo got the Ctrl-C too and stops itself
        return 0
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)


def _stop_on_sigterm():
    """Make SIGTERM end the wait like Ctrl-C (so marimo is stopped and the copy removed);
    returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535; got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mono_quant.playground``: the same as ``mono-quant playground``."""
    from ..cli import main as cli_main

    return cli_main(["playground", *(sys.argv[1:] if argv is None else argv)])
