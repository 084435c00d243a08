"""Opening ``gilfree run``'s INPUT and OUT: counting the input, locking the output,
and refusing to bury an earlier run's records or to write over the input."""

from __future__ import annotations

import os
import stat
import sys
from typing import IO

from . import UsageError
from ._jsonl import count_lines

#: Input files up to this size are counted first (about 1 GB/s, in blocks) to
#: give the planner, the chunker and the progress bar a total; past it the
#: second read would cost more than a better plan is likely to save.
_COUNT_LIMIT = 1 << 30


def open_input(path: str | None) -> tuple[IO[bytes], int | None]:
    if path is None or path == "-":
        if sys.stdin.isatty():
            print("gilfree: reading JSON lines from the terminal; end with Ctrl-D", file=sys.stderr)
        # Our own handle on fd 0 so that closing it does not close sys.stdin.
        return open(sys.stdin.fileno(), "rb", closefd=False), None
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise UsageError(f"cannot read input {path!r}: {exc.strerror}")
    if os.path.isdir(path):
        f.close()
        raise UsageError(f"cannot read input {path!r}: it is a directory")
    total = None
    if os.path.isfile(path) and os.path.getsize(path) <= _COUNT_LIMIT:
        total = count_lines(path)
    return f, total


def open_output(path: str | None, *, resume: bool, overwrite: bool) -> tuple[int, bool]:
    """Open OUT for appending, locked; refuse to bury an earlier run's records.

    Nothing is truncated here unless the user said --overwrite, and only once
    the lock is ours (a running gilfree's file is never emptied under it).
    """
    if path is None:
        sys.stdout.flush()
        return sys.stdout.fileno(), False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write output {path!r}: {exc.strerror}")
    try:
        _lock_output(fd, path)
        info = os.fstat(fd)
        regular = stat.S_ISREG(info.st_mode)
        if regular and info.st_size > 0 and not resume and not overwrite:
            raise UsageError(
                f"{path!r} already holds {info.st_size} bytes; --resume to finish that run, "
                "--overwrite to replace it"
            )
        if regular and overwrite:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _lock_output(fd: int, path: str) -> None:
    """Hold an exclusive lock on OUT for the whole run.

    Two runs appending to one file (a resume started while the first run is
    still going) would each write the indices the other has not yet written:
    duplicates. The kernel drops the lock when the process ends, SIGKILL
    included, so a crash never leaves the file locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(f"{path!r} is being written by another gilfree run; wait for it to end")
    except OSError:  # a file system without locks (some network mounts): go on unlocked
        return


def refuse_same_file(input_path: str, output_path: str) -> None:
    try:
        same = os.path.samefile(input_path, output_path)
    except OSError:
        return
    if same:
        raise UsageError(f"-o {output_path!r} is the input file; writing would destroy it")
