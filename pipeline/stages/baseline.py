"""baseline: fit scikit-learn's classical models on the validated split, the bar every deep
model must clear; each one is a lineage run in MLflow like the deep models.

Writes models/baseline/<name>.pkl and reports/baseline/<name>.json (svc, boosting).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.io import atomic_path
from pipeline.core.outputs import BaselineReport, LineageMetric
from pipeline.core.params import Params, flatten
from pipeline.core.stage import start
from pipeline.data.prepared import Prepared, load_prepared
from pipeline.data.validation_results import require_validated


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("baseline", __doc__, argv)
    with timer.phase("data"):
        prepared = load_prepared()
        require_validated(prepared)
    timer.imports("pipeline.ml.baselines", "sklearn.svm", "sklearn.ensemble")
    with timer.phase("compute"):
        fitted = {name: fit_and_measure(name, params, prepared) for name in layout.BASELINE_NAMES}
    with timer.phase("outputs"):
        write_outputs(fitted)
    runs = []
    outputs = [layout.BASELINE_DIR, *map(layout.baseline_report, layout.BASELINE_NAMES)]
    with timer.phase("logging"), tracking.after_outputs(outputs):
        for name, (model, report) in fitted.items():
            runs.append(log_baseline(name, model, report, params, prepared))
    timer.finish(functools.partial(log_to_every, runs))
    for name, (_, report) in fitted.items():
        print(summary(name, report))


def fit_and_measure(name: str, params: Params, prepared: Prepared) -> tuple[Any, BaselineReport]:
    from pipeline.ml.baselines import fit_baseline, measure_baseline

    model, chosen, grid = fit_baseline(name, prepared.splits, params.baseline, params.seed)
    report = measure_baseline(
        name,
        model,
        chosen,
        grid,
        prepared.splits,
        prepared.class_names,
        params.evaluate,
        params.seed,
    )
    return model, report


def write_outputs(fitted: dict[str, tuple[Any, BaselineReport]]) -> None:
    """models/baseline/ in a temporary folder renamed into place, then the reports."""
    import joblib

    with atomic_path(layout.BASELINE_DIR) as folder:
        folder.mkdir()
        for name, (model, _) in fitted.items():
            joblib.dump(model, folder / layout.baseline_model(name).name)
    for name, (_, report) in fitted.items():
        report.write(layout.baseline_report(name))


def log_baseline(
    name: str, model: Any, report: BaselineReport, params: Params, prepared: Prepared
) -> str:
    """A lineage run per baseline: params, the deep models' metric names, the report, the data
    and the model with the sklearn flavor; returns its id."""
    from pipeline.ml.baselines import features

    tags = {
        **tracking.data_tags(prepared.manifest, params.seed, params.mlflow.tags),
        "model_family": name,
        "dvc_stage": "baseline",
        "baseline": "true",
    }
    block = getattr(params.baseline, name)
    chosen = {f"chosen.{k}": v for k, v in report.chosen.items()}
    logged = {"seed": params.seed, **flatten(block, f"baseline.{name}"), **chosen}
    with tracking.lineage_run(params.experiment_name, name, tags) as run:
        tracking.log_params(run, logged)
        tracking.record_model(run, layout.baseline_model(name))
        tracking.log_metrics(run, headline_metrics(report))
        tracking.log_artifacts(run, [layout.baseline_report(name)], "baseline")
        tracking.log_datasets(run, prepared.manifest, params.data.model_dump())
        example = features(prepared["test"][0][:5])
        tracking.log_sklearn_model(run, model, example.astype(np.float32))
    return run


def log_to_every(runs: list[str], metrics: dict[str, float]) -> None:
    for run in runs:
        tracking.log_metrics(run, metrics)


def headline_metrics(report: BaselineReport) -> dict[str, float]:
    """The names the deep models' lineage runs carry, where their meaning carries over."""
    return {
        "test_accuracy": report.test_accuracy,
        "val_accuracy": report.validation_accuracy,
        LineageMetric.ACCURACY: report.clean.accuracy,
        "evaluate.macro_f1": report.clean.macro_f1,
        "evaluate.ece": report.clean.ece,
        "evaluate.corruption_accuracy_mean": report.corruption_accuracy_mean,
    }


def summary(name: str, report: BaselineReport) -> str:
    chosen = ", ".join(f"{k} {v}" for k, v in report.chosen.items())
    return (
        f"baseline: {name} test accuracy {report.test_accuracy:.4f} ({chosen}) -> "
        f"{layout.baseline_report(name)}"
    )


if __name__ == "__main__":
    run_stage("baseline", main)
