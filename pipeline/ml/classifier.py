"""One classifier family trained end to end: built from params, fitted (resumably, on the
devices `train.common.distribute` names) and scored on every split."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.cli import PipelineError
from pipeline.core.layout import CHECKPOINTS
from pipeline.core.outputs import TrainMetrics
from pipeline.core.params import Params, flatten

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (images, labels)


def lineage_params(params: Params, name: str) -> dict[str, Any]:
    """What defines this model: data, split, shared training knobs and its own block.

    Keys are family-neutral (`model.optimizer.learning_rate`) so MLflow's compare view lines
    up the three families."""
    return {
        "seed": params.seed,
        **flatten(params.data, "data"),
        **flatten(params.train.common, "train"),
        **flatten(params.train.model(name), "model"),
    }


def checkpoint_dir(name: str, params: Params, data_hash: str) -> Path:
    """Where an interrupted training waits to resume, keyed by everything that defines the model:
    a rerun with other params or data starts afresh."""
    key = json.dumps([lineage_params(params, name), data_hash], default=str)
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
    splits: Splits,
    num_classes: int,
    checkpoints: Path | None = None,
    chief: bool = True,
    progress: str | None = None,
) -> tuple[Any, dict[str, list[float]], TrainMetrics]:
    """Build, fit and score a classifier; with `checkpoints`, resume an interrupted fit.
    Returns (model, history, metrics); the model is a float32 copy outside any strategy,
    whatever the training's precision and devices."""
    # TensorFlow is imported here, after params and data have been checked: bad input fails
    # in well under a second instead of after TensorFlow's ~4 s import.
    from pipeline.ml.distribute import make_strategy
    from pipeline.ml.models import build_classifier
    from pipeline.ml.training import (
        Resumable,
        augmenter,
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
    block = params.train.model(name)
    image_shape = splits["train"][0].shape[1:]
    strategy = make_strategy(common.distribute)  # first: it sets up the devices
    make_deterministic(params.seed)

    def build() -> Any:
        return build_classifier(name, params.train, image_shape, num_classes)

    with precision(common.mixed_precision), strategy.scope():
        trained = build()
        trainer = trainer_for(trained, block.adversarial)
        compile_classifier(trainer, block.optimizer, common)
    resumable = None
    if checkpoints is not None:
        resumable = Resumable(checkpoints, backup_every_s(common.distribute))
        if done := resumable.finished_epochs:
            print(f"train: {name}: resuming after epoch {done} from {checkpoints}")
    history = fit_classifier(
        trainer,
        splits["train"],
        splits["val"],
        common,
        num_classes,
        callbacks=resumable.callbacks(log=chief) if resumable is not None else None,
        augment=augmenter(block.augment, params.seed) if block.augment.active else None,
        progress=progress,
    )
    if resumable is not None and chief:
        history = resumable.history()
    model = plain_copy(trained, build)
    scores = {
        f"{split}_{key}": value
        for split, (x, y) in splits.items()
        for key, value in score(predict_proba(model, x), y).items()
    }
    replicas = int(strategy.num_replicas_in_sync)
    metrics = TrainMetrics(
        **scores,
        **summarize_history(history),
        parameters=int(model.count_params()),
        replicas=replicas,
        global_batch_size=common.batch_size * replicas,
    )
    return model, history, metrics
