"""``python -m mono_quant``: the ``mono-quant`` command (see ``mono_quant.cli``)."""

import sys

from .cli import main

sys.exit(main())
