"""``python -m unix_socketpair``: the command-line tool."""

from ._cli import main

raise SystemExit(main())
