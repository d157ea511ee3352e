"""What every stage's main() does first (parse its arguments, load and check params, fix the
arithmetic's reproducibility mode, start the clock of its time split) and how it opens its MLflow
run."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.core import reproducibility
from pipeline.core.cli import stage_args
from pipeline.core.layout import MODEL_NAMES
from pipeline.core.params import Params, load_params
from pipeline.core.timing import StageTimer


class StageStart(NamedTuple):
    params: Params
    name: str  # the family of a per-family stage (`--model`), else the stage's own name
    timer: StageTimer


def start(
    stage: str, description: str | None, argv: Sequence[str] | None, per_family: bool = False
) -> StageStart:
    args = stage_args(stage, description, argv, MODEL_NAMES if per_family else ())
    params = load_params(args.params)  # bad params stop the stage here, in one line
    reproducibility.apply(params.reproducibility)  # before the stage's first TensorFlow op
    name = args.model if per_family else stage
    return StageStart(params, name, StageTimer(f"{stage}@{name}" if per_family else stage))


def apply_reproducibility(params_path: str | Path) -> None:
    """For a tool that runs TensorFlow outside the DAG (predict, generate): the arithmetic of the
    project's mode, or of the default mode where no params file is at hand."""
    path = Path(params_path)
    reproducibility.apply(load_params(path).reproducibility if path.exists() else "portable")


def open_run(
    stack: contextlib.ExitStack,
    timer: StageTimer,
    run: contextlib.AbstractContextManager[str],
    params: Mapping[str, Any],
) -> str:
    """Enter `run` (a model's lineage run, or a stage's child run of it) on `stack`, so that it
    stays open until the stack closes, and log its params; the time counts as logging."""
    from pipeline.core import tracking  # MLflow: only the stages that log pay its import

    with timer.phase("logging"):
        run_id = stack.enter_context(run)
        tracking.log_params(run_id, params)
    return run_id
