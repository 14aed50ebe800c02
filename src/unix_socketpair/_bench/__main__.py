"""``python -m unix_socketpair._bench``: the same as ``unix-socketpair bench``."""

from ._command import main

raise SystemExit(main())
