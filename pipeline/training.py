"""Training and scoring of a compiled-from-params classifier: pure functions over arrays."""

from __future__ import annotations

import contextlib
import csv
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.models import build_optimizer
from pipeline.params import AdversarialParams, OptimizerParams, TrainCommon
from pipeline.robustness import linf_attack


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and force deterministic kernels: two runs with the same
    seed and data give bit-identical weights."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def precision(mixed: bool) -> Iterator[None]:
    """Layers built inside compute in float16 and keep float32 weights when `mixed` (Keras's
    mixed_float16 policy; compile then scales the loss so small gradients survive)."""
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def plain_copy(trained: keras.Model, build: Callable[[], keras.Model]) -> keras.Model:
    """`build()`'s model (float32, outside any strategy) holding `trained`'s weights: what is
    scored, saved and served, whatever the precision and devices of the training."""
    copy = build()
    copy.set_weights(trained.get_weights())
    return copy


def encode_labels(y: np.ndarray, common: TrainCommon, num_classes: int) -> np.ndarray:
    if common.loss == "categorical_crossentropy":
        return np.eye(num_classes, dtype=np.float32)[y]
    return y


def compile_classifier(model: keras.Model, optimizer: OptimizerParams, common: TrainCommon) -> None:
    if common.loss == "categorical_crossentropy":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=common.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=build_optimizer(optimizer), loss=loss, metrics=["accuracy"])


class AdversarialTraining(keras.Model):
    """Trains `classifier` on clean and attacked images together: each batch's loss is
    (1 - weight)·L(x) + weight·L(x_adv), x_adv crafted by FGSM or PGD against the current
    weights (Goodfellow et al. 2015; Madry et al. 2018). Validation runs on clean images, and
    the wrapped classifier is what gets saved."""

    def __init__(self, classifier: keras.Model, p: AdversarialParams) -> None:
        super().__init__(name=f"{classifier.name}_adversarial")
        self.classifier = classifier
        self.random_start = p.method == "pgd"  # FGSM: one full-epsilon step from the image
        self.epsilon, self.weight = p.epsilon, p.weight
        self.steps = p.steps if self.random_start else 1

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.classifier(x, training=training)

    def attack(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if not self.random_start:
            return linf_attack(self.classifier, x, y, self.epsilon, 1, self.epsilon, loss=self.loss)
        start = tf.random.uniform(tf.shape(x), -self.epsilon, self.epsilon)
        step = 2.5 * self.epsilon / self.steps
        return linf_attack(self.classifier, x, y, self.epsilon, self.steps, step, start, self.loss)

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        x, y = data
        attacked = self.attack(x, y)
        count = tf.shape(x)[0]
        # Per-sample weights 2(1-w) and 2w over the doubled batch: the mean loss is exactly
        # (1-w)·mean L(clean) + w·mean L(attacked).
        weights = tf.concat(
            [tf.fill([count], 2.0 * (1.0 - self.weight)), tf.fill([count], 2.0 * self.weight)], 0
        )
        images, targets = tf.concat([x, attacked], 0), tf.concat([y, y], 0)
        with tf.GradientTape() as tape:
            predicted = self(images, training=True)
            value = self.compiled_loss(targets, predicted, weights, self.losses)
        self.optimizer.minimize(value, self.trainable_variables, tape=tape)
        self.compiled_metrics.update_state(targets, predicted, weights)
        return {metric.name: metric.result() for metric in self.metrics}


def trainer_for(model: keras.Model, p: AdversarialParams) -> keras.Model:
    """The model `fit` trains: the classifier itself, or its adversarial-training wrapper."""
    return model if p.method == "none" else AdversarialTraining(model, p)


def input_pipeline(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False
) -> tf.data.Dataset:
    """Arrays as batches, the tf.data way: cached after the first pass, reshuffled every epoch
    (seeded by the global seed), batched, and prefetched so the next batch is ready while the
    current one trains. Sharded by example across workers (multi_worker)."""
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        data = data.shuffle(len(x), reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    common: TrainCommon,
    num_classes: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 2,
) -> dict[str, list[float]]:
    """Fit with early stopping on validation loss (best weights restored); return the history.

    `common.batch_size` is per replica: under a tf.distribute strategy with N replicas each
    step takes N × batch_size examples."""
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=common.early_stopping_patience,
        restore_best_weights=True,
    )
    batch = common.batch_size * model.distribute_strategy.num_replicas_in_sync
    history = model.fit(
        input_pipeline(train[0], encode_labels(train[1], common, num_classes), batch, True),
        validation_data=input_pipeline(val[0], encode_labels(val[1], common, num_classes), batch),
        epochs=common.epochs,
        callbacks=[stop, *(callbacks or [])],
        verbose=verbose,
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


class Resumable:
    """Keras's BackupAndRestore plus an epoch log beside its folder: a fit killed mid-way resumes
    from its last finished epoch when rerun, and the history covers every epoch, before and after
    the interruption. Early stopping's patience and best weights restart with the resumed fit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder.parent / f"{folder.name}.history.csv"
        if not folder.exists():  # nothing to resume: an old log would only duplicate epochs
            self.log.unlink(missing_ok=True)

    @property
    def finished_epochs(self) -> int:
        return len(self._rows())

    def callbacks(self, log: bool = True) -> list[keras.callbacks.Callback]:
        """`log=False` for a multi-worker cluster's other workers: every worker backs up and
        restores (Keras keeps theirs apart), only the chief keeps the epoch log."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # The epoch's row is written before its checkpoint: killed in between, the epoch reruns
        # and its row is replaced (see _rows), never lost.
        logger = [keras.callbacks.CSVLogger(str(self.log), append=True)] if log else []
        return [*logger, keras.callbacks.BackupAndRestore(str(self.folder))]

    def history(self) -> dict[str, list[float]]:
        rows = self._rows()
        keys = sorted({k for row in rows for k in row} - {"epoch"})
        return {k: [float(row[k]) for row in rows] for k in keys}

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def _rows(self) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        with self.log.open(newline="") as handle:
            by_epoch = {int(row["epoch"]): row for row in csv.DictReader(handle)}
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return model.predict(x, batch_size=batch_size, verbose=0)


def score(probabilities: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of predicted probabilities against integer labels."""
    eps = np.finfo(np.float32).eps
    picked = np.clip(probabilities[np.arange(len(y)), y], eps, 1.0)
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == y)),
        "loss": float(-np.mean(np.log(picked))),
    }


def best_epoch(history: dict[str, list[float]]) -> int:
    """1-based epoch whose weights early stopping restored (lowest validation loss)."""
    return int(np.argmin(history["val_loss"])) + 1


def summarize_history(history: dict[str, Any]) -> dict[str, int]:
    return {"epochs_trained": len(history["loss"]), "best_epoch": best_epoch(history)}
