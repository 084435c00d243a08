"""``UsageError``: bad usage or unusable input, shown as one line with exit status 2.

Its own module, below both the command line (``gilfree.cli``, ``_cli``) and the
benchmark suite (``gilfree.bench``), so neither imports the other for it.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad usage or unusable input: printed as one line, exit status 2."""
