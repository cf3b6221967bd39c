"""`python -m mtlkit` runs the `mtlkit` command."""

from mtlkit.cli import main

raise SystemExit(main())
