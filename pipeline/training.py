"""Training and scoring of a compiled-from-params classifier: pure functions over arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.models import build_optimizer
from pipeline.params import OptimizerParams, TrainCommon


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and force deterministic kernels: two runs with the same
    seed and data give bit-identical weights."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    common: TrainCommon,
    num_classes: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 2,
) -> dict[str, list[float]]:
    """Fit with early stopping on validation loss (best weights restored); return the history."""
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=common.early_stopping_patience,
        restore_best_weights=True,
    )
    history = model.fit(
        train[0],
        encode_labels(train[1], common, num_classes),
        validation_data=(val[0], encode_labels(val[1], common, num_classes)),
        epochs=common.epochs,
        batch_size=common.batch_size,
        shuffle=True,
        callbacks=[stop, *(callbacks or [])],
        verbose=verbose,
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


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
