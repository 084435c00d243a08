"""Pieces of the ``gilfree`` command; the entry point and argument parsing are in ``gilfree.cli``.

* ``_target``   -- ``MODULE:FUNC`` to a callable (dotted module or ``.py`` path)
* ``_jsonl``    -- lazy JSON Lines input, crash-safe output and ``--resume``
* ``_run``      -- ``gilfree run``
* ``_files``    -- ``gilfree run``'s INPUT and OUT: counted, locked, never buried
* ``_advise``   -- ``gilfree advise``

Anything that should end the command with exit status 2 and one plain line
on stderr raises :class:`UsageError`; ``gilfree.cli.main`` prints it.
"""

from __future__ import annotations

from .._usage import UsageError

__all__ = ["UsageError"]
