"""train: fit one classifier family (fnn, cnn or lstm) on validated data; start its lineage run.

Writes models/<name>/ (model.keras, history.csv, inputs.json) and reports/train/<name>.json; the
lineage run is tagged with the model file's digest, by which later stages find it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.io import atomic_path, history_csv
from pipeline.core.outputs import ModelInputs, TrainMetrics
from pipeline.core.params import Params
from pipeline.core.stage import open_run, start
from pipeline.data.prepared import Prepared, load_prepared
from pipeline.data.validation_results import require_validated
from pipeline.ml.classifier import checkpoint_dir, lineage_params, train_classifier
from pipeline.ml.distribute import cluster_task, is_chief


def main(argv: Sequence[str] | None = None) -> None:
    params, name, timer = start("train", __doc__, argv, per_family=True)
    with timer.phase("data"):
        prepared = load_prepared()
        require_validated(prepared)
    if not is_chief(params.train.common.distribute):  # a malformed TF_CONFIG stops here
        return train_as_worker(name, params, prepared)
    timer.imports("pipeline.ml.models", "pipeline.ml.training")  # TensorFlow
    checkpoints = checkpoint_dir(name, params, prepared.content_hash)
    with contextlib.ExitStack() as stack:
        tags = lineage_tags(name, params, prepared)
        opening = tracking.lineage_run(params.experiment_name, name, tags)
        run = open_run(stack, timer, opening, lineage_params(params, name))
        with timer.phase("compute"):
            trained = train_classifier(
                name,
                params,
                prepared.splits,
                prepared.num_classes,
                checkpoints,
                progress=f"train {name}",
            )
        with timer.phase("outputs"):  # first: a logging failure must not lose the model
            write_outputs(name, *trained, ModelInputs.from_manifest(prepared.manifest))
            clear_backup(checkpoints)
        outputs = [layout.model_dir(name), layout.train_metrics(name)]
        with timer.phase("logging"), tracking.after_outputs(outputs):
            _model, history, metrics = trained
            # First: the tag by which every later stage finds this run.
            lineage = tracking.record_model(run, layout.model_file(name)) or run
            log_training(run, name, history, metrics, example=prepared["test"][0][:5])
            tracking.log_datasets(run, prepared.manifest, params.data.model_dump())
        timer.finish(functools.partial(tracking.log_metrics, run))
    print(summary(name, trained[2], run, lineage))


def summary(name: str, metrics: TrainMetrics, run: str, lineage: str) -> str:
    text = (
        f"train: {name} test accuracy {metrics.test_accuracy:.4f} ({metrics.epochs_trained} "
        f"epochs) -> {layout.model_dir(name)}, MLflow run {run}"
    )
    if lineage != run:
        text += f": the same weights as run {lineage}, which stays the lineage"
    return text


def lineage_tags(name: str, params: Params, prepared: Prepared) -> dict[str, Any]:
    block = params.train.model(name)
    return {
        **tracking.data_tags(prepared.manifest, params.seed, params.mlflow.tags),
        "model_family": name,
        "dvc_stage": f"train@{name}",
        "adversarial_training": block.adversarial.method,
    }


def train_as_worker(name: str, params: Params, prepared: Prepared) -> None:
    """A multi-worker cluster's other worker: it trains; the chief records."""
    task_type, index, size = cluster_task(params.train.common.distribute)
    checkpoints = checkpoint_dir(name, params, prepared.content_hash)
    label = f"train {name} ({task_type} {index})"
    train_classifier(
        name, params, prepared.splits, prepared.num_classes, checkpoints, False, progress=label
    )
    print(f"train: {name}: {task_type} {index} of {size} workers done; the chief writes")


def write_outputs(
    name: str,
    model: Any,
    history: dict[str, list[float]],
    metrics: TrainMetrics,
    inputs: ModelInputs,
) -> None:
    """models/<name>/, written in a temporary folder and renamed (never half-written), then the
    metrics."""
    from pipeline.ml.artifacts import save_keras

    with atomic_path(layout.model_dir(name)) as folder:
        folder.mkdir()
        save_keras(model, folder / layout.MODEL_FILE)
        (folder / layout.HISTORY_FILE).write_text(history_csv(history), encoding="utf-8")
        inputs.write(folder / layout.INPUTS_FILE)
    metrics.write(layout.train_metrics(name))


def clear_backup(checkpoints: Path) -> None:
    """The outputs are safe: nothing is left to resume."""
    from pipeline.ml.training import Resumable

    Resumable(checkpoints).clear()


def log_training(
    run: str,
    name: str,
    history: dict[str, list[float]],
    metrics: TrainMetrics,
    example: np.ndarray,
) -> None:
    """The run's epoch curves and metrics, and the saved model as MLflow serves it."""
    tracking.log_series(
        run, {f"epoch/{k}": list(enumerate(v, start=1)) for k, v in history.items()}
    )
    tracking.log_metrics(run, metrics.model_dump())
    tracking.log_artifacts(run, [layout.history_file(name)], "train")
    inputs = layout.model_dir(name) / layout.INPUTS_FILE
    tracking.log_artifacts(run, [inputs])
    tracking.log_classifier(run, layout.model_file(name), inputs, example.astype(np.float32))


if __name__ == "__main__":
    run_stage("train", main)
