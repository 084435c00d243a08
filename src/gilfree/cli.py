"""The ``gilfree`` command: ``run``, ``advise`` and ``bench``.

Exit status: 0 when everything succeeded, 1 when a task failed, 2 on bad
usage or unusable input (one plain line on stderr, never a traceback),
130 after Ctrl-C (what was done is kept; ``run --resume`` finishes it).
The commands themselves live in ``gilfree._cli`` and ``gilfree.bench``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from ._cli import UsageError

EXIT_USAGE = 2
EXIT_INTERNAL = 3
BACKENDS = ("auto", "serial", "thread", "process", "dask")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (usage is behind --help)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gilfree",
        description="Run a Python function over many inputs on the right kind of parallelism.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gilfree {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run MODULE:FUNC over JSON Lines",
        description=(
            "Call FUNC on each line of INPUT (JSON Lines; default stdin) and write one record "
            'per line: {"index": i, "result": ...} or {"index": i, "error": {"type", "message", '
            '"traceback"}}. The index is the 0-based line number; blank lines are skipped. '
            "The function always runs in worker processes (or on Dask), never in this one: "
            "--backend serial and thread run on process workers. "
            "Exit status: 0 all succeeded, 1 some failed, 2 bad usage or input, 130 interrupted."
        ),
    )
    _add_target(run)
    run.add_argument("input", nargs="?", metavar="INPUT", help="JSON Lines file (default: stdin)")
    run.add_argument("-o", "--output", metavar="OUT", help="write records here (default: stdout)")
    run.add_argument("--backend", choices=BACKENDS, default="auto", help="default: auto")
    run.add_argument("--workers", type=_positive_int, metavar="N")
    run.add_argument("--chunksize", type=_positive_int, metavar="N", help="default: automatic")
    run.add_argument("--timeout", type=_seconds, metavar="S", help="per task, in seconds")
    run.add_argument(
        "--retries",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="re-run a failed task up to N more times",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip the indices already in OUT (after cutting off a torn last line)",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run the error records in OUT again and replace them",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT (without it, an existing OUT is refused)",
    )
    run.add_argument(
        "--unordered", action="store_true", help="write records as tasks finish, not in input order"
    )
    run.add_argument("--address", metavar="URL", help="Dask scheduler for --backend dask or auto")

    adv = commands.add_parser(
        "advise",
        help="probe MODULE:FUNC on sample items and explain the plan",
        description="Probe FUNC on the first items of INPUT (default stdin) and explain the plan.",
    )
    _add_target(adv)
    adv.add_argument("input", nargs="?", metavar="INPUT", help="JSON Lines file (default: stdin)")
    adv.add_argument("--json", action="store_true", help="print the plan as JSON")
    adv.add_argument(
        "--samples",
        type=_positive_int,
        default=8,
        metavar="N",
        help=(
            "take the first N items as samples (default: 8); the probe calls as many "
            "as it needs, in order, and the plan says how many"
        ),
    )
    adv.add_argument(
        "--budget",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds the probe may spend (default: 1)",
    )
    adv.add_argument("--workers", type=_positive_int, metavar="N")
    adv.add_argument("--address", metavar="URL", help="Dask scheduler to plan for")

    bench = commands.add_parser(
        "bench",
        help="run the built-in workload suite on every backend",
        description=(
            "Time the built-in workloads (CPU-bound Python, sleeping I/O, GIL-releasing C code, "
            "tiny tasks, a large array argument) on serial, thread, process and auto."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    bench.add_argument("--plot", metavar="FILE.png", help="draw the speedups (needs matplotlib)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated workloads to run (cpu,io,hash,tiny,array; default: all)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive_int,
        metavar="N",
        help="best of N runs (default: 1 quick, 3 full)",
    )
    return parser


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="MODULE:FUNC",
        help="a dotted module importable from here, or a path to a .py file, then :function",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gilfree`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args, argv)
    except UsageError as exc:
        print(f"gilfree: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gilfree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception:
        traceback.print_exc()
        print("gilfree: internal error: the traceback above is a bug in gilfree", file=sys.stderr)
        return EXIT_INTERNAL


def retry_command(argv: Sequence[str]) -> str:
    """The command line that retries the failed records of the run ``argv`` describes."""
    args = [a for a in argv if a != "--overwrite"]
    for flag in ("--resume", "--retry-failed"):
        if flag not in args:
            args.append(flag)
    return shlex.join(["gilfree", *args])


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "run":
        from ._cli._run import Terminated, run
        from ._cli._target import load_target

        fn = load_target(args.target)
        options: dict[str, Any] = {"backend": args.backend, "retries": args.retries}
        for name in ("workers", "chunksize", "timeout", "address"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)

        def on_sigterm(signum: int, frame: Any) -> None:
            raise Terminated()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return run(
                fn,
                target=args.target,
                input_path=args.input,
                output_path=args.output,
                resume=args.resume,
                retry_failed=args.retry_failed,
                overwrite=args.overwrite,
                ordered=not args.unordered,
                options=options,
                retry_command=retry_command(argv),
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
    if args.command == "advise":
        from ._cli._advise import advise
        from ._cli._target import load_target

        load_target(args.target)  # a one-line error now, before any sample is read
        return advise(
            args.target,
            input_path=args.input,
            samples=args.samples,
            budget=args.budget,
            workers=args.workers,
            address=args.address,
            as_json=args.json,
        )
    if args.command == "bench":
        from .bench.command import main as bench_main

        return bench_main(
            quick=args.quick, plot=args.plot, as_json=args.json, repeat=args.repeat, only=args.only
        )
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
