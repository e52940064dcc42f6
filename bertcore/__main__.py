"""`python -m bertcore ...`: the `bertcore` command, for when its script is not on PATH."""
import os
import sys

# `python -m` puts the current folder first on sys.path (the console script does not): a
# *.dist-info lying there, say in an unpacked download, would be read as an installed plugin
# and its module run. bertcore itself is imported already; drop that entry, as `python -P` would.
if not sys.flags.safe_path and sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    del sys.path[0]

from .cli import main  # noqa: E402

sys.exit(main())
