"""``python -m vecz`` runs the command line (the same as the ``vecz`` script)."""

from .engine.cli import main

raise SystemExit(main())
