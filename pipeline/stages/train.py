"""train: fit one classifier family (fnn, cnn or lstm) on validated data; start its lineage run.

Writes models/<name>/ (model.keras, history.csv, lineage.json) and reports/train/<name>.json.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import tracking
from pipeline.core.cli import PipelineError, run_stage, stage_parser
from pipeline.core.io import atomic_path, write_json
from pipeline.core.layout import LINEAGE_FILE, MODEL_FILE, MODELS_DIR
from pipeline.core.params import MODEL_NAMES, Params, flatten, load_params
from pipeline.core.timing import StageTimer
from pipeline.data.prepared import PREPARED_DIR, Prepared, load_prepared
from pipeline.data.sources import SPLITS
from pipeline.ml.distribute import cluster_task, is_chief
from pipeline.stages.validate import require_validated

TRAIN_REPORTS = Path("reports/train")
CHECKPOINTS = Path(".checkpoints")  # interrupted trainings, kept until a rerun completes them


def lineage_params(params: Params, name: str) -> dict[str, Any]:
    """What defines this model: data, split, shared training knobs and its own block.

    Keys are family-neutral (`model.optimizer.learning_rate`) so MLflow's compare view lines
    up the three families."""
    return {
        "seed": params.seed,
        **flatten(params.data, "data"),
        **flatten(params.train.common, "train"),
        **flatten(params.train.model(name), "model"),  # type: ignore[arg-type]
    }


def history_csv(history: dict[str, list[float]]) -> str:
    keys = sorted(history)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for epoch, values in enumerate(zip(*(history[k] for k in keys), strict=True), start=1):
        writer.writerow([epoch, *(f"{v:.6g}" for v in values)])
    return buffer.getvalue()


def checkpoint_dir(name: str, params: Params, prepared: Prepared) -> Path:
    """Where an interrupted training waits to resume, keyed by everything that defines the model:
    a rerun with other params or data starts afresh."""
    key = json.dumps([lineage_params(params, name), prepared.content_hash], default=str)
    return CHECKPOINTS / f"train_{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def backup_every_s(distribute: str) -> float:
    """How often an interrupted fit's backup is refreshed: PIPELINE_BACKUP_EVERY_S seconds
    (default 30; 0 for every epoch). A multi-worker cluster backs up every epoch: its workers
    must back up together, which their own clocks cannot agree on."""
    if distribute == "multi_worker":
        return 0.0
    value = os.environ.get("PIPELINE_BACKUP_EVERY_S", "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise PipelineError(f"PIPELINE_BACKUP_EVERY_S={value!r}: expected seconds >= 0")
    return seconds


def train_classifier(
    name: str,
    params: Params,
    prepared: Prepared,
    checkpoints: Path | None = None,
    chief: bool = True,
) -> tuple[Any, dict, dict]:
    """Build, fit and score a classifier on the devices `train.common.distribute` names; with
    `checkpoints`, resume an interrupted fit. Returns (model, history, metrics); the model is a
    float32 copy outside any strategy, whatever the training's precision and devices."""
    # TensorFlow is imported here, after params and data have been checked: bad input fails
    # in well under a second instead of after TensorFlow's ~4 s import.
    from pipeline.ml.distribute import make_strategy
    from pipeline.ml.models import build_classifier
    from pipeline.ml.training import (
        Resumable,
        compile_classifier,
        fit_classifier,
        make_deterministic,
        plain_copy,
        precision,
        predict_proba,
        score,
        summarize_history,
        trainer_for,
    )

    common = params.train.common
    num_classes = int(prepared.manifest["num_classes"])
    block = params.train.model(name)  # type: ignore[arg-type]
    strategy = make_strategy(common.distribute)  # first: it sets up the devices
    make_deterministic(params.seed)

    def build() -> Any:
        return build_classifier(name, params.train, prepared.image_shape, num_classes)  # type: ignore[arg-type]

    with precision(common.mixed_precision), strategy.scope():
        trained = build()
        trainer = trainer_for(trained, block.adversarial)
        compile_classifier(trainer, block.optimizer, common)
    every_s = backup_every_s(common.distribute)
    resumable = Resumable(checkpoints, every_s) if checkpoints is not None else None
    if resumable is not None and resumable.finished_epochs:
        print(f"train: {name}: resuming after epoch {resumable.finished_epochs} from {checkpoints}")
    history = fit_classifier(
        trainer,
        prepared["train"],
        prepared["val"],
        common,
        num_classes,
        callbacks=resumable.callbacks(log=chief) if resumable is not None else None,
    )
    if resumable is not None and chief:
        history = resumable.history()
    model = plain_copy(trained, build)
    metrics: dict[str, float | int] = {}
    for split in SPLITS:
        x, y = prepared[split]
        for key, value in score(predict_proba(model, x), y).items():
            metrics[f"{split}_{key}"] = value
    metrics.update(summarize_history(history))
    metrics["parameters"] = int(model.count_params())
    metrics["replicas"] = int(strategy.num_replicas_in_sync)
    metrics["global_batch_size"] = common.batch_size * metrics["replicas"]
    return model, history, metrics


def save_model_dir(folder: Path, model: Any, history: dict, lineage: dict) -> None:
    """models/<name>/ written in a temporary folder and renamed: never half-written. `model` is
    train_classifier's uncompiled copy: the deployable weights, without the optimizer's state."""
    from pipeline.ml.models import save_keras

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_keras(model, tmp / MODEL_FILE)
        (tmp / "history.csv").write_text(history_csv(history), encoding="utf-8")
        write_json(tmp / LINEAGE_FILE, lineage)


def main(argv: Sequence[str] | None = None) -> None:
    timer = StageTimer("train")
    parser = stage_parser("train", __doc__ or "")
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    name = args.model
    timer.stage = f"train@{name}"
    with timer.phase("data"):
        prepared = load_prepared(PREPARED_DIR)
        require_validated(prepared)
    distribute = params.train.common.distribute
    chief = is_chief(distribute)  # a malformed TF_CONFIG stops here, before TensorFlow loads
    with timer.phase("imports"):  # TensorFlow, only once params and data have been checked
        import pipeline.ml.models  # noqa: F401
        from pipeline.ml.training import Resumable
    if not chief:  # a multi-worker cluster's other worker: it trains; the chief records
        task_type, index, size = cluster_task(distribute)
        train_classifier(name, params, prepared, checkpoint_dir(name, params, prepared), False)
        print(f"train: {name}: {task_type} {index} of {size} workers done; the chief writes")
        return
    tags = {
        "model_family": name,
        "dvc_stage": f"train@{name}",
        "dataset": prepared.manifest["source"],
        "data_hash": prepared.content_hash,
        "seed": params.seed,
        "adversarial_training": params.train.model(name).adversarial.method,  # type: ignore[arg-type]
        **params.mlflow.tags,
    }
    with contextlib.ExitStack() as stack:
        with timer.phase("logging"):
            run_id = stack.enter_context(
                tracking.lineage_run(params.experiment_name, f"{name}", tags)
            )
            tracking.log_params(run_id, lineage_params(params, name))
        checkpoints = checkpoint_dir(name, params, prepared)
        with timer.phase("compute"):
            model, history, metrics = train_classifier(name, params, prepared, checkpoints)
        lineage = {"run_id": run_id, "experiment": params.experiment_name}
        # Outputs first: a logging failure afterwards must not lose the trained model.
        with timer.phase("outputs"):
            save_model_dir(MODELS_DIR / name, model, history, lineage)
            write_json(TRAIN_REPORTS / f"{name}.json", metrics)
        Resumable(checkpoints).clear()  # the outputs are safe: nothing left to resume
        outputs = [MODELS_DIR / name, TRAIN_REPORTS / f"{name}.json"]
        with timer.phase("logging"), tracking.after_outputs(outputs):
            tracking.log_series(
                run_id,
                {f"epoch/{k}": list(enumerate(values, start=1)) for k, values in history.items()},
            )
            tracking.log_metrics(run_id, metrics)
            tracking.log_artifacts(run_id, [MODELS_DIR / name / "history.csv"], "train")
            tracking.log_keras_model(model, prepared["test"][0][:5].astype(np.float32))
        timer.finish(functools.partial(tracking.log_metrics, run_id))
    print(
        f"train: {name} test accuracy {metrics['test_accuracy']:.4f} "
        f"({metrics['epochs_trained']} epochs) -> {MODELS_DIR / name}, MLflow run {run_id}"
    )


if __name__ == "__main__":
    run_stage("train", main)
