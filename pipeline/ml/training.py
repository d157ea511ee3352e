"""Training and scoring of a compiled-from-params classifier: pure functions over arrays."""

from __future__ import annotations

import contextlib
import csv
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.core import console
from pipeline.core.params import AdversarialParams, AugmentParams, OptimizerParams, TrainCommon
from pipeline.ml.models import build_optimizer
from pipeline.ml.robustness import linf_attack


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


def epochs_within(epochs: int, max_steps: int, steps_per_epoch: int) -> int:
    """`epochs`, or fewer: as many whole epochs as `max_steps` batches allow, and at least one."""
    return max(1, min(epochs, max_steps // max(1, steps_per_epoch)))


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


def per_example(loss: keras.losses.Loss) -> keras.losses.Loss:
    """`loss` (label smoothing and all) without its reduction: one value per image. Under
    tf.distribute a reduced loss is allowed only inside compile; the attack needs only each
    image's own gradient, which reducing would merely scale."""
    return type(loss).from_config({**loss.get_config(), "reduction": keras.losses.Reduction.NONE})


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
        loss = per_example(self.loss)
        if not self.random_start:
            return linf_attack(self.classifier, x, y, self.epsilon, 1, self.epsilon, loss=loss)
        start = tf.random.uniform(tf.shape(x), -self.epsilon, self.epsilon)
        step = 2.5 * self.epsilon / self.steps
        return linf_attack(self.classifier, x, y, self.epsilon, self.steps, step, start, loss)

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
    """The model `fit` trains: the classifier itself, or its adversarial-training wrapper, built
    on the classifier's input shape (so that backups know its variables before `fit`)."""
    if p.method == "none":
        return model
    wrapper = AdversarialTraining(model, p)
    wrapper.build(model.input_shape)
    return wrapper


def augmenter(p: AugmentParams, seed: int) -> keras.Sequential:
    """The training-only random changes `p` asks for, as Keras preprocessing layers seeded from
    `seed`; moved pixels are sampled by `p.interpolation`, areas moved into view filled with 0,
    the background."""
    resampling = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": p.interpolation}
    layers: list[keras.layers.Layer] = []
    if p.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    if p.translation:
        layers.append(
            keras.layers.RandomTranslation(p.translation, p.translation, seed=seed, **resampling)
        )
    if p.rotation:
        layers.append(keras.layers.RandomRotation(p.rotation / 360.0, seed=seed + 1, **resampling))
    if p.zoom:
        layers.append(keras.layers.RandomZoom(p.zoom, seed=seed + 2, **resampling))
    if p.contrast:
        layers.append(keras.layers.RandomContrast(p.contrast, seed=seed + 3))
    return keras.Sequential(layers, name="augment")


def input_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    augment: keras.Sequential | None = None,
) -> tf.data.Dataset:
    """Arrays as batches, the tf.data way: cached after the first pass, reshuffled every epoch
    (seeded by the global seed), batched, augmented afresh every epoch if asked (pixels kept in
    [0, 1]), and prefetched so the next batch is ready while the current one trains. Sharded by
    example across workers (multi_worker)."""
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        data = data.shuffle(len(x), reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if augment is not None:
        data = data.map(
            lambda images, labels: (tf.clip_by_value(augment(images, training=True), 0, 1), labels)
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.prefetch(tf.data.AUTOTUNE).with_options(options)


class Progress(keras.callbacks.Callback):
    """A training's progress as one line (`console.progress_text`): on a terminal, redrawn in
    place after every epoch; elsewhere printed at each tenth of the epochs, and once more where
    early stopping ends the training between two of them."""

    def __init__(self, label: str, epochs: int, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.label, self.epochs = label, epochs
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = self.stream.isatty()
        self.milestones = console.milestones(epochs)
        self.started = time.monotonic()
        self.epoch = 0
        self.first_epoch: int | None = None  # where this process began: a resumed run skips some
        self.logs: dict[str, float] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch, self.logs = epoch + 1, {k: float(v) for k, v in (logs or {}).items()}
        if self.interactive:
            self.stream.write("\r" + self.text() + "\x1b[K")  # erase what a longer line left
            self.stream.flush()
        elif self.epoch in self.milestones:
            self.stream.write(self.text() + "\n")
            self.stream.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.interactive:
            self.stream.write("\r" + self.text(done=True) + "\x1b[K\n")
        elif self.epoch not in self.milestones:
            self.stream.write(self.text(done=True) + "\n")
        self.stream.flush()

    def text(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        timed = self.epoch - (self.first_epoch or 0)  # epochs this process trained
        return console.progress_text(
            self.label, self.epoch, self.epochs, self.logs, elapsed, done, timed=timed
        )


def console_progress(label: str, epochs: int) -> tuple[int, list[keras.callbacks.Callback]]:
    """Keras's verbosity and the callbacks that show a training on the console: its `Progress`
    line, or Keras's own per-epoch lines when asked for (`console.verbose`)."""
    if console.verbose():
        return 2, []
    return 0, [Progress(label, epochs)]


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    common: TrainCommon,
    num_classes: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
    augment: keras.Sequential | None = None,
    progress: str | None = None,
) -> dict[str, list[float]]:
    """Fit with early stopping on validation loss (best weights restored); return the history.
    `augment` changes the training batches only (`augmenter`); with a `progress` label the
    console follows the training (`console_progress`), else it runs with Keras's `verbose`.

    `common.batch_size` is per replica: under a tf.distribute strategy with N replicas each
    step takes N × batch_size examples."""
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=common.early_stopping_patience,
        restore_best_weights=True,
    )
    for callback in callbacks or []:
        if isinstance(callback, PeriodicBackup):
            callback.early_stopping = stop  # resumed with the weights
    batch = common.batch_size * model.distribute_strategy.num_replicas_in_sync
    shown: list[keras.callbacks.Callback] = []
    if progress is not None:
        verbose, shown = console_progress(progress, common.epochs)
    history = model.fit(
        input_pipeline(
            train[0], encode_labels(train[1], common, num_classes), batch, True, augment
        ),
        validation_data=input_pipeline(val[0], encode_labels(val[1], common, num_classes), batch),
        epochs=common.epochs,
        callbacks=[stop, *(callbacks or []), *shown],
        verbose=verbose,
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def backed_up_epochs(folder: Path) -> int:
    """Epochs the latest backup in `folder` holds (Keras stores the epoch in progress beside the
    weights, in the chief's folder); 0 without one."""
    latest = tf.train.latest_checkpoint(str(folder / "chief"))
    if latest is None:
        return 0
    reader = tf.train.load_checkpoint(latest)
    return int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


def early_stopping_file(folder: Path) -> Path:
    """Early stopping's state beside the chief's backup, which Keras removes after a fit."""
    return folder / "chief" / "early_stopping.npz"


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, backing up at the end of an epoch only once `every_s` seconds
    have passed since the last backup (0: every epoch). A backup costs tens of milliseconds and
    slows the epochs around it: per epoch, that is 10-15% of a small model's training time,
    while a kill would lose at most `every_s` seconds of work this way.

    Given an `early_stopping` callback (listed before this one, so that it has seen the epoch),
    its counters and best weights are backed up after the weights, and restored with them: a
    resumed fit counts its patience from the same best epoch, and keeps the same best weights,
    as an uninterrupted one. The random draws of the epochs after the backup are not restored."""

    clock = staticmethod(time.monotonic)

    def __init__(self, folder: Path, every_s: float) -> None:
        super().__init__(str(folder))
        self.folder = folder
        self.every_s = every_s
        self.early_stopping: keras.callbacks.EarlyStopping | None = None
        self._last = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # the weights, the optimizer and the epoch
        self._last = self.clock()
        state = early_stopping_file(self.folder)
        if self.early_stopping is not None and state.exists():
            epoch = backed_up_epochs(self.folder) - 1  # -1: no backup, never a saved epoch
            restore_early_stopping(self.early_stopping, state, epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.clock() - self._last >= self.every_s:
            self._backup(epoch=epoch)
            chief = self.model.distribute_strategy.extended.should_checkpoint
            if self.early_stopping is not None and chief:
                save_early_stopping(self.early_stopping, early_stopping_file(self.folder), epoch)
            self._last = self.clock()


def save_early_stopping(stop: keras.callbacks.EarlyStopping, path: Path, epoch: int) -> None:
    """`stop`'s state after `epoch` (0-based), written whole or not at all."""
    from pipeline.core.io import atomic_path

    weights = {f"weight_{i}": w for i, w in enumerate(stop.best_weights or [])}
    with atomic_path(path) as staging, staging.open("wb") as handle:
        np.savez(
            handle,
            epoch=epoch,
            wait=stop.wait,
            best=stop.best,
            best_epoch=stop.best_epoch,
            **weights,
        )


def restore_early_stopping(stop: keras.callbacks.EarlyStopping, path: Path, epoch: int) -> bool:
    """`stop`'s state as saved after `epoch`; whether it was. A file from another epoch (a kill
    between the two writes of a backup) is left alone, and early stopping starts afresh."""
    with np.load(path) as saved:
        if int(saved["epoch"]) != epoch:
            return False
        stop.wait, stop.best = int(saved["wait"]), float(saved["best"])
        stop.best_epoch = int(saved["best_epoch"])
        count = sum(1 for key in saved.files if key.startswith("weight_"))
        stop.best_weights = [saved[f"weight_{i}"] for i in range(count)] or None
    return True


class Resumable:
    """Periodic backups (PeriodicBackup) plus an epoch log beside their folder: a fit killed
    mid-way resumes after its last backed-up epoch when rerun, and the history covers every
    epoch, before and after the interruption. Early stopping's counters and best weights resume
    with it (PeriodicBackup)."""

    def __init__(self, folder: Path, every_s: float = 0.0) -> None:
        self.folder = folder
        self.every_s = every_s
        self.log = folder.parent / f"{folder.name}.history.csv"
        if not folder.exists():  # nothing to resume: an old log would only duplicate epochs
            self.log.unlink(missing_ok=True)

    @property
    def finished_epochs(self) -> int:
        """Epochs the latest backup holds: the fit resumes after them."""
        return backed_up_epochs(self.folder)

    def callbacks(self, log: bool = True) -> list[keras.callbacks.Callback]:
        """`log=False` for a multi-worker cluster's other workers: every worker backs up and
        restores (Keras keeps theirs apart), only the chief keeps the epoch log. A cluster must
        back up every epoch (every_s=0): its workers decide together, not by their own clocks."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # Epochs logged after the last backup run again: drop their rows. An epoch's row is
        # written before any backup of it, so a kill in between reruns it, never loses it.
        rows = self._rows()[: self.finished_epochs]
        if log and self.log.exists():
            self._write_rows(rows)
        logger = [keras.callbacks.CSVLogger(str(self.log), append=True)] if log else []
        return [*logger, PeriodicBackup(self.folder, self.every_s)]

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

    def _write_rows(self, rows: list[dict[str, str]]) -> None:
        if not rows:
            self.log.unlink(missing_ok=True)
            return
        with self.log.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


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
