"""evaluate: clean accuracy and calibration, robustness to attacks and corruptions, speed, and
explanations of one trained classifier; its TFLite variants on the same corruptions and on
attacks transferred from their float parent.

Writes reports/evaluate/<name>.json (results) and reports/evaluate/<name>/ (PNG figures and the
CSV files behind `dvc plots`); latency, throughput and wall time, which vary run to run, go to
reports/measured/evaluate/<name>.json and to MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.io import atomic_path, file_digest
from pipeline.core.outputs import EvaluateReport, EvaluateSpeed, unmet
from pipeline.core.params import Params, flatten
from pipeline.core.stage import open_run, start
from pipeline.data.prepared import Prepared, load_prepared

if TYPE_CHECKING:
    from pipeline.ml.inference import TFLiteModel


def main(argv: Sequence[str] | None = None) -> None:
    params, name, timer = start("evaluate", __doc__, argv, per_family=True)
    with timer.phase("data"):
        prepared = load_prepared()
    started = time.perf_counter()
    timer.imports("pipeline.ml.artifacts", "pipeline.ml.inference", "pipeline.ml.training")
    with timer.phase("data"):  # every model file is checked before any work
        model, variants = load_models(name)
        lineage = tracking.lineage_of(params.experiment_name, layout.model_file(name))
    with contextlib.ExitStack() as stack:
        logged = {"seed": params.seed, **flatten(params.evaluate, "evaluate")}
        child = tracking.stage_run(lineage, "evaluate", {"model_family": name})
        run = open_run(stack, timer, child, logged)
        with timer.phase("compute"):
            report, speed, grid = evaluate(name, model, variants, prepared, params)
        with timer.phase("outputs"):
            timed = write_outputs(name, report, speed, grid, prepared["test"], model, started)
        outputs = [layout.evaluate_dir(name), layout.evaluate_report(name)]
        with timer.phase("logging"), tracking.after_outputs(outputs):
            log_evaluation(run, lineage, name, report, timed)
        timer.finish(functools.partial(tracking.log_metrics, lineage))
    print(summary(name, report, timed, params.evaluate.robust_epsilon))


def load_models(name: str) -> tuple[Any, dict[str, tuple[TFLiteModel, Any, str]]]:
    """The float model, and each TFLite variant as (LiteRT model, float parent, parent's file):
    the pruned variants' parent is the pruned Keras model, the others' the trained one."""
    from pipeline.ml.artifacts import load_keras
    from pipeline.ml.inference import load_tflite

    model_file = layout.model_file(name)
    model = load_keras(model_file)
    pruned_file = layout.compressed_dir(name) / layout.PRUNED_FILE
    pruned = load_keras(pruned_file) if pruned_file.exists() else None
    variants = {}
    for path in sorted(layout.compressed_dir(name).glob("*.tflite")):
        parent, parent_file = (
            (pruned, pruned_file)
            if path.stem.startswith("pruned") and pruned is not None
            else (model, model_file)
        )
        variants[path.stem] = (load_tflite(path), parent, str(parent_file))
    return model, variants


def evaluate(
    name: str,
    model: Any,
    variants: dict[str, tuple[TFLiteModel, Any, str]],
    prepared: Prepared,
    params: Params,
) -> tuple[EvaluateReport, dict[str, float], dict[str, np.ndarray]]:
    from pipeline.ml.evaluation import evaluate_model, keras_speed

    p, test = params.evaluate, prepared["test"]
    report, grid = evaluate_model(
        model, variants, test, prepared.class_names, p, params.seed, params.targets.evaluate
    )
    # The saved Keras model's size: what serving loads, and what promotion bounds.
    model_bytes = layout.model_file(name).stat().st_size
    typed = EvaluateReport.model_validate({"model": name, "model_bytes": model_bytes, **report})
    return typed, keras_speed(model, test[0], p), grid


def write_outputs(
    name: str,
    report: EvaluateReport,
    speed: dict[str, float],
    grid: dict[str, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    model: Any,
    started: float,
) -> EvaluateSpeed:
    """reports/evaluate/<name>/ (plot tables and figures) replaced whole, then the report and
    the speed figures, with the stage's wall time from loading the models to here."""
    from pipeline.ml.evaluation_figures import plot_tables, write_figures
    from pipeline.ml.training import predict_proba

    x, y = test
    predicted = predict_proba(model, x).argmax(axis=1)
    with atomic_path(layout.evaluate_dir(name)) as staging:
        staging.mkdir()
        for filename, text in plot_tables(report, y, predicted).items():
            (staging / filename).write_text(text, encoding="utf-8")
        write_figures(staging, name, report, grid)
    timed = EvaluateSpeed.model_validate(
        {
            **speed,
            "wall_time_s": time.perf_counter() - started,
            "model_digest": file_digest(layout.model_file(name)),
        }
    )
    report.write(layout.evaluate_report(name))
    timed.write(layout.evaluate_speed(name))
    return timed


def log_evaluation(
    run: str, lineage_run: str, name: str, report: EvaluateReport, speed: EvaluateSpeed
) -> None:
    from pipeline.ml.evaluation import headline_metrics

    metrics = headline_metrics(report, speed)
    tracking.log_metrics(run, metrics)
    tracking.log_metrics(lineage_run, metrics)
    tracking.log_artifacts(
        run, [layout.evaluate_report(name), layout.evaluate_dir(name)], "evaluate"
    )
    # Its own folder: the measured file has the report's name.
    tracking.log_artifacts(run, [layout.evaluate_speed(name)], "evaluate/measured")


def summary(name: str, report: EvaluateReport, speed: EvaluateSpeed, epsilon: float) -> str:
    clean = report.clean
    return (
        f"evaluate: {name}: accuracy {clean.accuracy:.4f}, ECE {clean.ece:.4f}, "
        f"PGD@{epsilon:g} {report.adversarial.robust_accuracy:.4f}, most faithful "
        f"{report.explanations.faithfulness.most_faithful}; targets not met: "
        f"{unmet(report.targets) or 'none'} ({speed.wall_time_s:.0f} s) "
        f"-> {layout.evaluate_dir(name)}"
    )


if __name__ == "__main__":
    run_stage("evaluate", main)
