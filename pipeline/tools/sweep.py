"""sweep: the points of a grid search and the best one by a chosen metric, from MLflow.

A sweep is a set of DVC experiments queued with one `mlflow.sweep` name and a grid of `-S`
values (see the README); every lineage run of it carries the tag `sweep`. This prints one row
per run: its DVC experiment, model, the params that vary across the sweep and the metric, then
the best point.

    python -m pipeline sweep NAME [--metric test_accuracy] [--model cnn] [--lowest]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from pipeline.core import tracking
from pipeline.core.cli import PipelineError, run_stage
from pipeline.core.params import MODEL_NAMES, load_params


class SweepRun(BaseModel):
    """One lineage run of a sweep: its DVC experiment, family, params and latest metrics."""

    model_config = ConfigDict(frozen=True)

    run_id: str = "-"
    status: str = "-"
    experiment: str = "-"
    model: str = "-"
    params: dict[str, str]
    metrics: dict[str, float]


def varying(runs: Sequence[SweepRun]) -> list[str]:
    """The param keys, common to all runs, whose values differ between them: the sweep's axes
    (a family's own keys, `model.filters` say, only vary when one family is asked for)."""
    keys = sorted(set.intersection(*(set(run.params) for run in runs))) if runs else []
    return [key for key in keys if len({run.params[key] for run in runs}) > 1]


def best(runs: Sequence[SweepRun], metric: str, lowest: bool = False) -> SweepRun:
    scored = [run for run in runs if metric in run.metrics]
    if not scored:
        raise PipelineError(f"no run of the sweep has the metric '{metric}'")
    pick = min if lowest else max
    return pick(scored, key=lambda run: run.metrics[metric])


def sweep_runs(experiment: str, sweep: str, model: str | None) -> list[SweepRun]:
    """The sweep's lineage runs (not the stages' child runs)."""
    client = tracking.open_store(tracking.tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise PipelineError(f"MLflow experiment '{experiment}' not found")
    quoted = sweep.replace("'", "\\'")
    query = f"tags.sweep = '{quoted}'" + (f" and tags.model_family = '{model}'" if model else "")
    runs = client.search_runs([found.experiment_id], query, max_results=5000)
    return [
        SweepRun(
            run_id=run.info.run_id,
            status=run.info.status,
            experiment=run.data.tags.get("dvc_experiment", "-"),
            model=run.data.tags.get("model_family", "-"),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )
        for run in runs
        if "mlflow.parentRunId" not in run.data.tags
    ]


def table(runs: Sequence[SweepRun], metric: str) -> str:
    axes = varying(runs)
    header = ["experiment", "model", *axes, metric]
    rows = [
        [
            run.experiment,
            run.model,
            *(run.params.get(key, "-") for key in axes),
            f"{run.metrics[metric]:.4f}" if metric in run.metrics else "-",
        ]
        for run in sorted(runs, key=lambda r: (r.model, r.experiment))
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in [header, *rows]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline sweep", description=__doc__)
    parser.add_argument("sweep", help="the sweep's name (mlflow.sweep)")
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--model", choices=[*MODEL_NAMES, "gan"])
    parser.add_argument("--lowest", action="store_true", help="lower is better (a loss)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runs = sweep_runs(params.experiment_name, args.sweep, args.model)
    if not runs:
        raise PipelineError(
            f"no lineage run tagged sweep '{args.sweep}' in experiment '{params.experiment_name}'"
        )
    print(table(runs, args.metric))
    top = best(runs, args.metric, args.lowest)
    point = ", ".join(f"{key}={top.params.get(key, '-')}" for key in varying(runs))
    print(
        f"best by {args.metric}: {top.experiment} ({top.model}; {point}) "
        f"{args.metric}={top.metrics[args.metric]:.4f}, MLflow run {top.run_id}"
    )


if __name__ == "__main__":
    run_stage("sweep", main)
