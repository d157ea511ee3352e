"""`python -m pipeline <stage> [args]`: how DVC runs every stage.

A stage that needs TensorFlow goes to a warm server (`pipeline.runtime`), which has TensorFlow and
MLflow imported already; the others, and every stage when PIPELINE_WARM=0 or no server can be
had, run in this process, exactly as `python -m pipeline.<stage>` runs them. The stages that
come before the TensorFlow ones start the server, so that its imports overlap their work.
"""

from __future__ import annotations

import sys

from pipeline.runtime import warm

STAGES = ("ingest", "validate", "train", "gan", "compress", "evaluate", "report")
PREWARM = ("ingest", "validate")  # the stages that come before the TensorFlow ones


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m pipeline {{{','.join(STAGES)}}} [args]", file=sys.stderr)
        return 2
    stage, argv = sys.argv[1], sys.argv[2:]
    if warm.enabled(stage):
        try:
            return warm.run(stage, argv)
        except warm.Unavailable as why:
            print(f"{stage}: warm start unavailable ({why}); running cold", file=sys.stderr)
    if stage in PREWARM:
        warm.prewarm()
    sys.argv = [sys.argv[0], *argv]
    return warm.run_here(stage)


if __name__ == "__main__":
    sys.exit(main())
