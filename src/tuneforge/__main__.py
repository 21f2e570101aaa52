"""`python -m tuneforge` runs the CLI."""

from tuneforge.cli import main

raise SystemExit(main())
