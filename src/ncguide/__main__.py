"""``python -m ncguide`` = the ``ncguide`` command."""

from .cli import main

raise SystemExit(main())
