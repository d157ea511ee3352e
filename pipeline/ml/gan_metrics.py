"""How good is the GAN: pure functions over arrays (features, predictions, labels).

Fréchet distance as in Heusel et al. (2017), on features of the project's own CNN; agreement
and coverage from that CNN's predictions; GAN-train/GAN-test as in Shmelkov et al. (2018).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def frechet_distance_from_stats(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)) between two Gaussians."""
    with warnings.catch_warnings():  # singular products are handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise as the reference code does
        eps = 1e-6 * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = np.real(root)  # tiny imaginary parts are numerical noise
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root)
    return float(max(value, 0.0))


# Significant digits of a Fréchet distance over float32 features. Those carry about seven, and
# their last bit differs between processors whose kernels sum in another order, with identical
# weights: one-ulp changes in a thousand of the CNN's features move the digits' distance by
# about 2e-9 relative. Six digits are what the features can say, the same on every machine.
FRECHET_DIGITS = 6


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples), to
    `FRECHET_DIGITS` significant digits."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    value = frechet_distance_from_stats(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )
    return float(f"{value:.{FRECHET_DIGITS}g}")


def agreement(predicted: np.ndarray, conditioned: np.ndarray) -> float:
    """Share of generated images the classifier assigns to the class they were asked for."""
    return float(np.mean(predicted == conditioned))


def coverage(predicted: np.ndarray, num_classes: int) -> dict[str, float | int | bool]:
    """Which classes the generated set covers, and how evenly (entropy of predicted classes)."""
    counts = np.bincount(predicted, minlength=num_classes)[:num_classes]
    share = counts / max(counts.sum(), 1)
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return {
        "classes_covered": int((counts > 0).sum()),
        "all_classes_covered": bool((counts > 0).all()),
        "predicted_class_entropy": entropy,
        "predicted_class_entropy_ratio": entropy / float(np.log(num_classes)),
    }


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
