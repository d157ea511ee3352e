"""The three families as one classifier: the mean of their class probabilities. Measured as
evaluate measures a member (clean accuracy and calibration, white-box attacks on the mean, the
corruption sweeps), plus the attacks crafted on each member alone and carried over to it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.core.outputs import Check, severity_key
from pipeline.core.params import EvaluateParams
from pipeline.ml.evaluation import (
    accuracy,
    accuracy_curves,
    adversarial_sets,
    clean_performance,
    corruption_sets,
    sweep_indices,
)


class MeanOfMembers:
    """Called as a Keras model is (`model(images, training=False)`): the members' probabilities
    averaged in the graph, so the gradient attacks follow the ensemble itself."""

    def __init__(self, members: Sequence[Any]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)

    def __call__(self, images: Any, training: bool = False) -> Any:
        import tensorflow as tf

        return tf.add_n([member(images, training=training) for member in self.members]) / len(
            self.members
        )


def mean_probabilities(members: Sequence[Any], x: np.ndarray) -> np.ndarray:
    """Each member's predicted probabilities for `x`, averaged."""
    from pipeline.ml.training import predict_proba

    return np.mean([predict_proba(member, x) for member in members], axis=0)


def evaluate_ensemble(
    members: Mapping[str, Any],
    test: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    p: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """The ensemble's report (an EnsembleReport's fields), on the test split and the same sweep
    images evaluate draws for each member."""
    from pipeline.ml.training import make_deterministic, predict_proba

    x, y = test
    make_deterministic(seed)
    models = list(members.values())

    def predict(images: np.ndarray) -> np.ndarray:
        return mean_probabilities(models, images)

    sweep = sweep_indices(len(y), p.max_images, seed)
    xs, ys = x[sweep], y[sweep]
    white_box = adversarial_sets(MeanOfMembers(models), xs, ys, p, seed)
    adversarial = accuracy_curves(predict, white_box, ys)
    member_accuracy = {name: accuracy(predict_proba(m, x), y) for name, m in members.items()}
    clean = clean_performance(predict(x), y, class_names, p.calibration_bins)
    best = max(member_accuracy, key=lambda name: member_accuracy[name])
    return {
        "members": list(members),
        "member_accuracy": member_accuracy,
        "test_images": len(y),
        "sweep_images": len(ys),
        "clean": clean,
        "adversarial": {
            **adversarial,
            "robust_epsilon": p.robust_epsilon,
            "robust_accuracy": adversarial["pgd"][severity_key(p.robust_epsilon)],
            "pgd_steps": p.pgd_steps,
        },
        "transferred_attacks": {
            name: {
                "crafted_on": name,
                **accuracy_curves(predict, adversarial_sets(model, xs, ys, p, seed), ys),
            }
            for name, model in members.items()
        },
        "corruptions": accuracy_curves(predict, corruption_sets(xs, p, seed), ys),
        "targets": {
            "accuracy_vs_best_member": Check.at_least(
                clean["accuracy"], member_accuracy[best], variant=best
            )
        },
    }
