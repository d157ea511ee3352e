"""The thin edge every stage shares: one-line errors, exit codes, and the --debug switch."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn


class PipelineError(Exception):
    """An expected failure (bad input, bad params, failed validation): shown as one line."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """`<Type>: <first non-blank line of the message>`, at most `limit` characters: how an
    error from a library is named inside a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text[:limit]


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so runs and temporary files are closed on the way out."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def stage_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every stage and tool takes; `prog` is the command DVC and the README run."""
    parser = _OneLineParser(prog=f"python -m pipeline {stage}", description=description)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Keras's per-epoch lines and every line the native libraries print "
        "(or PIPELINE_VERBOSE=1)",
    )
    return parser


def stage_args(
    stage: str, description: str | None, argv: Sequence[str] | None, models: Sequence[str] = ()
) -> argparse.Namespace:
    """A stage's parsed arguments: --params and --debug, and --model for a family's stage."""
    parser = stage_parser(stage, description)
    if models:
        parser.add_argument("--model", required=True, choices=models)
    return parser.parse_args(argv)


def run_stage(stage: str, main: Callable[[Sequence[str] | None], None]) -> None:
    """Run a stage's main(); turn failures into one line on stderr and a non-zero exit.

    Exit codes: 0 success, 1 expected failure (PipelineError, or a file that cannot be read or
    written), 2 unexpected error, 130 interrupt, 143 SIGTERM.
    """
    from pipeline.core import console

    argv = sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminate)
    if not Path("dvc.yaml").is_file():  # a tool run outside a project: no log folder to keep
        _run(stage, main, argv)
        return
    try:
        with console.filtered_stderr(console.log_file(stage, argv), console.verbose(argv)):
            _run(stage, main, argv)
    except KeyboardInterrupt as error:  # after the stage ended, while its log was being closed
        sys.exit(143 if isinstance(error, Terminated) else 130)


def _run(stage: str, main: Callable[[Sequence[str] | None], None], argv: list[str]) -> None:
    try:
        main(argv)
    except PipelineError as error:
        if debug_enabled(argv):
            raise
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as error:
        how = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        print(f"{stage}: {how}; its outputs were left as they were", file=sys.stderr)
        sys.exit(143 if isinstance(error, Terminated) else 130)
    except Exception as error:
        if debug_enabled(argv):
            raise
        if isinstance(error, OSError) and error.filename:  # disk full, unwritable folder
            print(f"{stage}: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
            sys.exit(1)
        # Anything else is a bug: say so in one line.
        print(
            f"{stage}: internal error: {type(error).__name__}: {error} "
            "(rerun with --debug or PIPELINE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(2)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()
