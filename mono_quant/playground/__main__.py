"""``python -m mono_quant.playground``: serve the playground (see ``launch``)."""

from .launch import main

raise SystemExit(main())
