"""Write the ``mono-quant`` command for a checkout built in place (``make build``).

    python scripts/dev_command.py .venv/bin/mono-quant

The package is built in place (``mono_quant/_C.abi3.so`` next to the sources), not installed,
so pip's console script does not exist. This writes the equivalent launcher: a script run by
the current interpreter that imports ``mono_quant`` from this checkout and calls
``mono_quant.cli.main``. It is rewritten by every build, so it follows the checkout it was
built from. (``pip install -e .`` would compile the C extension a second time and put an
import hook in front of PYTHONPATH.)
"""

import os
import sys
from pathlib import Path

LAUNCHER = """#!{python}
# Written by `make build` (scripts/dev_command.py): the mono-quant command of the checkout
# {root}, which is built in place rather than installed.
import sys

sys.path.insert(0, {root!r})
from mono_quant.cli import main

sys.exit(main())
"""


def write_launcher(target: Path, python: str, root: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(LAUNCHER.format(python=python, root=str(root)))
    partial.chmod(0o755)
    os.replace(partial, target)  # a concurrent run never sees half a script


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/dev_command.py PATH_OF_THE_COMMAND")
    write_launcher(Path(sys.argv[1]), os.path.abspath(sys.executable), Path(__file__).resolve().parent.parent)
