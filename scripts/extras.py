"""Print the requirements of the named optional-dependency groups in pyproject.toml.

Used by the Makefile so the dependency list lives in one place:
    python scripts/extras.py test demo > requirements.txt
The pseudo-group ``build`` prints the build backend's requirements.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
groups = project["project"]["optional-dependencies"]
for name in sys.argv[1:]:
    reqs = project["build-system"]["requires"] + ["cmake>=3.18", "ninja"] if name == "build" else groups[name]
    for req in reqs:
        if not req.startswith("mono_quant"):
            print(req)
