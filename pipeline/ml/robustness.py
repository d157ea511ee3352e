"""Robustness measures: calibration, adversarial attacks and corruptions. Pure functions over
a tf_keras classifier (softmax output) and arrays of images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from scipy import ndimage


def calibration(probabilities: np.ndarray, y: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error (equal-width confidence bins, Guo et al. 2017) and the
    reliability diagram's data: per bin, mean confidence, accuracy and count."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            gap = abs(correct[members].mean() - confidence[members].mean())
            ece += count / len(y) * gap
        table.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return {"ece": float(ece), "bins": table}


def linf_attack(
    model: keras.Model,
    x: tf.Tensor,
    y: tf.Tensor | np.ndarray,
    epsilon: float,
    steps: int,
    step_size: float,
    start: tf.Tensor | None = None,
    loss: Callable[[Any, tf.Tensor], tf.Tensor] = keras.losses.sparse_categorical_crossentropy,
) -> tf.Tensor:
    """The L-infinity sign-gradient ascent on the loss that FGSM (one step of size epsilon from
    x) and PGD (several smaller steps from a random `start` offset) both are. Every iterate is
    projected back into the epsilon ball around x and into [0, 1]. Graph-safe: adversarial
    training calls it inside its train step."""
    images = x if start is None else tf.clip_by_value(x + start, 0.0, 1.0)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = loss(y, model(images, training=False))
        images = images + step_size * tf.sign(tape.gradient(value, images))
        images = tf.clip_by_value(images, x - epsilon, x + epsilon)
        images = tf.clip_by_value(images, 0.0, 1.0)
    return tf.stop_gradient(images)


def _batched(
    attack: Callable[[tf.Tensor, np.ndarray], tf.Tensor], x: np.ndarray, y: np.ndarray, batch: int
) -> np.ndarray:
    chunks = [
        attack(tf.convert_to_tensor(x[i : i + batch], tf.float32), y[i : i + batch]).numpy()
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(chunks) if chunks else x.astype(np.float32)


def fgsm(
    model: keras.Model, x: np.ndarray, y: np.ndarray, epsilon: float, batch: int = 512
) -> np.ndarray:
    """Fast gradient sign method (Goodfellow et al. 2015), L-infinity, clipped to [0, 1]."""
    return _batched(lambda xb, yb: linf_attack(model, xb, yb, epsilon, 1, epsilon), x, y, batch)


def pgd(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    seed: int = 0,
    batch: int = 512,
) -> np.ndarray:
    """Projected gradient descent (Madry et al. 2018), L-infinity ball of radius epsilon,
    uniform random start (seeded: the same inputs give the same attack)."""
    if epsilon == 0:
        return x.astype(np.float32)
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    start = np.random.default_rng(seed).uniform(-epsilon, epsilon, x.shape).astype(np.float32)
    starts = iter(start[i : i + batch] for i in range(0, len(x), batch))
    return _batched(
        lambda xb, yb: linf_attack(model, xb, yb, epsilon, steps, alpha, next(starts)),
        x,
        y,
        batch,
    )


def gaussian_noise(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


def occlude(x: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Random erasing: a square patch covering `fraction` of each image's area set to 0."""
    n, height, width = x.shape[:3]
    side_h = round(height * np.sqrt(fraction))
    side_w = round(width * np.sqrt(fraction))
    out = x.astype(np.float32).copy()
    if side_h == 0 or side_w == 0:
        return out
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, height - side_h + 1, n)
    lefts = rng.integers(0, width - side_w + 1, n)
    for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
        out[i, top : top + side_h, left : left + side_w] = 0.0
    return out


def shift(x: np.ndarray, pixels: int) -> np.ndarray:
    """Translate every image right and down by `pixels`, filling with 0 (background)."""
    return ndimage.shift(x, (0, pixels, pixels, 0), order=0, cval=0.0).astype(np.float32)


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    return np.clip(
        ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1, cval=0.0), 0.0, 1.0
    ).astype(np.float32)
