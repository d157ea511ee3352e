"""`python -m pipeline <stage> [args]`: how DVC runs every stage; `python -m pipeline <tool>`
runs the tools outside the DAG (promote, sweep, generate, predict, summary) the same way.

A stage that needs TensorFlow goes to a warm server (`pipeline.runtime`), which has TensorFlow and
MLflow imported already; the others, and every stage when PIPELINE_WARM=0 or no server can be
had, run in this process, exactly as `python -m pipeline.stages.<stage>` runs them. The stages that
come before the TensorFlow ones start the server, so that its imports overlap their work.
"""

from __future__ import annotations

import importlib
import sys

from pipeline.runtime import client

STAGES = (
    "ingest",
    "validate",
    "baseline",
    "train",
    "gan",
    "compress",
    "evaluate",
    "ensemble",
    "report",
)
PREWARM = ("ingest", "validate")  # the stages that come before the TensorFlow ones
TOOLS = ("promote", "sweep", "generate", "predict", "summary")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*STAGES, *TOOLS):
        print(
            f"usage: python -m pipeline {{{','.join((*STAGES, *TOOLS))}}} [args]", file=sys.stderr
        )
        return 2
    stage, argv = sys.argv[1], sys.argv[2:]
    if stage in TOOLS:
        from pipeline.core.cli import run_stage

        sys.argv = [sys.argv[0], *argv]
        run_stage(stage, importlib.import_module(f"pipeline.tools.{stage}").main)
        return 0
    if client.enabled(stage):
        try:
            return client.run(stage, argv)
        except client.Unavailable as why:
            print(f"{stage}: warm start unavailable ({why}); running cold", file=sys.stderr)
    if stage in PREWARM:
        client.prewarm()
    sys.argv = [sys.argv[0], *argv]
    return client.run_here(stage)


if __name__ == "__main__":
    sys.exit(main())
