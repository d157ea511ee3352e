"""Classical baselines on the prepared split: an RBF support-vector classifier (C and gamma
chosen on the validation split) and histogram gradient boosting, seeded. Pixels flattened into
one feature vector per image, as scikit-learn takes them; measured with the same functions as
the deep models (clean accuracy, calibration, the corruption sweeps)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core.outputs import BaselineReport
from pipeline.core.params import BaselineParams, EvaluateParams
from pipeline.ml.evaluation import (
    accuracy,
    accuracy_curves,
    clean_performance,
    corruption_sets,
    sweep_indices,
)

Split = tuple[np.ndarray, np.ndarray]
DESCRIPTIONS = {
    "svc": "scikit-learn SVC, RBF kernel (C and gamma chosen on the validation split)",
    "boosting": "scikit-learn HistGradientBoostingClassifier",
}


def features(images: np.ndarray) -> np.ndarray:
    """N×H×W×C images as N feature vectors, the input every baseline takes."""
    return images.reshape(len(images), -1).astype(np.float32)


def fit_svc(
    train: Split, validation: Split, p: BaselineParams
) -> tuple[Any, dict[str, int | float | str], list[dict[str, int | float | str]]]:
    """The grid's best (C, gamma) on the validation split, refit with Platt-scaled
    probabilities so that calibration and averaging with other models apply."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    x, y = features(train[0]), train[1]
    grid: list[dict[str, int | float | str]] = []
    for c, gamma in itertools.product(p.svc.C, p.svc.gamma):
        model = SVC(C=c, gamma=gamma).fit(x, y)
        score = float(np.mean(model.predict(features(validation[0])) == validation[1]))
        grid.append({"C": c, "gamma": gamma, "validation_accuracy": score})
    best = max(grid, key=lambda point: point["validation_accuracy"])  # the first of any tie
    chosen = {"C": best["C"], "gamma": best["gamma"]}
    # Platt scaling fitted on held-out folds of the train split (unshuffled: no randomness).
    model = CalibratedClassifierCV(SVC(C=chosen["C"], gamma=chosen["gamma"]), ensemble=False)
    return model.fit(x, y), chosen, grid


def fit_boosting(
    train: Split, p: BaselineParams, seed: int
) -> tuple[Any, dict[str, int | float | str]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    chosen: dict[str, int | float | str] = p.boosting.model_dump()
    model = HistGradientBoostingClassifier(**chosen, early_stopping=False, random_state=seed)
    return model.fit(features(train[0]), train[1]), chosen


def fit_baseline(
    name: str, splits: dict[str, Split], p: BaselineParams, seed: int
) -> tuple[Any, dict[str, int | float | str], list[dict[str, int | float | str]]]:
    """One baseline, fitted on the train split: (model, chosen params, grid tried)."""
    if name == "svc":
        return fit_svc(splits["train"], splits["val"], p)
    model, chosen = fit_boosting(splits["train"], p, seed)
    return model, chosen, [chosen]


def predict_proba(model: Any, images: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities over every class: a class the train split lacks gets zero."""
    known = model.predict_proba(features(images))
    probabilities = np.zeros((len(images), classes))
    probabilities[:, model.classes_] = known
    return probabilities


def measure_baseline(
    name: str,
    model: Any,
    chosen: dict[str, int | float | str],
    grid: list[dict[str, int | float | str]],
    splits: dict[str, Split],
    class_names: Sequence[str],
    p: EvaluateParams,
    seed: int,
) -> BaselineReport:
    """Validation and test accuracy, clean performance and the corruption curves on the same
    sweep images evaluate uses for the deep models."""

    def predict(images: np.ndarray) -> np.ndarray:
        return predict_proba(model, images, len(class_names))

    (x, y), (xv, yv) = splits["test"], splits["val"]
    sweep = sweep_indices(len(y), p.max_images, seed)
    clean = clean_performance(predict(x), y, class_names, p.calibration_bins)
    corruptions = accuracy_curves(predict, corruption_sets(x[sweep], p, seed), y[sweep])
    return BaselineReport.model_validate(
        {
            "description": DESCRIPTIONS[name],
            "chosen": chosen,
            "grid": grid,
            "validation_accuracy": accuracy(predict(xv), yv),
            "test_accuracy": clean["accuracy"],
            "test_images": len(y),
            "sweep_images": len(sweep),
            "clean": clean,
            "corruptions": corruptions,
        }
    )
