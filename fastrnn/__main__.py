"""`python -m fastrnn`: the same as the `fastrnn` command."""

from .cli import main

raise SystemExit(main())
