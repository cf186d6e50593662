"""``python -m ncguide`` = the ``ncguide`` command (:mod:`ncguide.experiments.cli`)."""

from .experiments.cli import main

raise SystemExit(main())
