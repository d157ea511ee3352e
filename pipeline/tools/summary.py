"""summary: what the last `dvc repro` did, on one screen, and the DAG as a picture (see
pipeline.core.repro_summary; the report stage prints the same at the end of a repro).

    python -m pipeline summary [--since EPOCH_SECONDS] [--unless-report-ran]

`make run` passes --since, the time its repro started, and --unless-report-ran, since a repro
that ran the report stage has printed this already.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline.core.cli import run_stage
from pipeline.core.repro_summary import show, stage_run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline summary", description=__doc__)
    parser.add_argument(
        "--since", type=float, help="when the repro started (seconds since the epoch)"
    )
    parser.add_argument(
        "--unless-report-ran",
        action="store_true",
        help="print nothing if the report stage ran after --since: it printed this at its end",
    )
    args = parser.parse_args(argv)
    if args.unless_report_ran and args.since is None:
        parser.error("--unless-report-ran needs --since: ran after when?")
    if args.unless_report_ran and stage_run("report", args.since).ran:
        return
    show(args.since)


if __name__ == "__main__":
    run_stage("summary", main)
