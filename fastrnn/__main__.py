"""`python -m fastrnn`: the same as the `fastrnn` command."""

from .tools.cli import main

raise SystemExit(main())
