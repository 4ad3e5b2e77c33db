"""`python -m raopd` runs the command-line interface."""

from raopd.cli import main

raise SystemExit(main())
