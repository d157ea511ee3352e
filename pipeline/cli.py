"""The thin edge every stage shares: one-line errors, exit codes, and the --debug switch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence


class PipelineError(Exception):
    """An expected failure (bad input, bad params, failed validation): shown as one line."""


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{stage}", description=description)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    return parser


def run_stage(stage: str, main: Callable[[Sequence[str] | None], None]) -> None:
    """Run a stage's main(); turn failures into one line on stderr and a non-zero exit.

    Exit codes: 0 success, 1 expected failure (PipelineError), 2 unexpected error, 130 interrupt.
    """
    argv = sys.argv[1:]
    try:
        main(argv)
    except PipelineError as error:
        if debug_enabled(argv):
            raise
        print(f"{stage}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # an unexpected failure is a bug: say so in one line
        if debug_enabled(argv):
            raise
        print(
            f"{stage}: internal error: {type(error).__name__}: {error} "
            "(rerun with --debug or PIPELINE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(2)
