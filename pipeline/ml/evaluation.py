"""Evaluation of a trained classifier: clean accuracy and calibration, robustness to attacks
and corruptions, speed, and explanations with their faithfulness; its TFLite variants face the
same corruptions and the attacks crafted on their float parent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.outputs import (
    EvaluateReport,
    EvaluateSpeed,
    LineageMetric,
    mean_accuracy,
    severity_key,
)
from pipeline.core.params import EvaluateParams, EvaluateTargets

if TYPE_CHECKING:
    from pipeline.ml.inference import TFLiteModel

Predict = Callable[[np.ndarray], np.ndarray]  # images -> class probabilities
Sets = dict[str, dict[float, np.ndarray]]  # perturbation -> severity -> perturbed images


GRID_CLASSES = 20  # classes an attribution grid shows: a page holds no more rows


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=1) == y))


def clean_performance(
    probabilities: np.ndarray, y: np.ndarray, class_names: Sequence[str], bins: int
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 (each class named), the confusion matrix and
    calibration."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from pipeline.ml.robustness import calibration

    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    calibrated = calibration(probabilities, y, bins)
    return {
        "accuracy": accuracy(probabilities, y),
        "macro_f1": float(np.mean(f1)),
        "ece": calibrated["ece"],
        "per_class": [
            {
                "class": c,
                "name": class_names[c],
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in labels
        ],
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
        "reliability": calibrated["bins"],
    }


def adversarial_sets(
    model: Any, x: np.ndarray, y: np.ndarray, p: EvaluateParams, seed: int
) -> Sets:
    """FGSM and PGD images for every epsilon, crafted against `model`."""
    from pipeline.ml.robustness import fgsm, pgd

    return {
        "fgsm": {e: fgsm(model, x, y, e) for e in p.epsilons},
        "pgd": {e: pgd(model, x, y, e, p.pgd_steps, p.pgd_step_size, seed) for e in p.epsilons},
    }


def corruption_sets(x: np.ndarray, p: EvaluateParams, seed: int) -> Sets:
    from pipeline.ml.robustness import gaussian_noise, occlude, rotate, shift

    return {
        "gaussian_noise": {s: gaussian_noise(x, s, seed) for s in p.noise_sigmas},
        "occlusion": {f: occlude(x, f, seed) for f in p.occlusion_fractions},
        "shift": {float(px): shift(x, px) for px in p.shifts},
        "rotation": {d: rotate(x, d) for d in p.rotations},
    }


def accuracy_curves(predict: Predict, sets: Sets, y: np.ndarray) -> dict[str, dict[str, float]]:
    return {
        name: {
            severity_key(severity): accuracy(predict(images), y)
            for severity, images in curve.items()
        }
        for name, curve in sets.items()
    }


def explained_indices(y: np.ndarray, per_class: int, total: int) -> np.ndarray:
    """The fixed image set: the first `per_class` test images of each of the first
    GRID_CLASSES classes (for the grids), then the next test images in order, up to `total`
    (for the faithfulness curves)."""
    grid = [i for c in np.unique(y)[:GRID_CLASSES] for i in np.flatnonzero(y == c)[:per_class]]
    rest = [i for i in range(len(y)) if i not in set(grid)]
    return np.array(grid + rest[: max(0, total - len(grid))], dtype=int)


def attributions(
    model: Any,
    x: np.ndarray,
    classes: np.ndarray,
    p: EvaluateParams,
    seed: int,
    completeness_bound: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every method's H×W map per image for `classes`, and IG's completeness error and steps
    per image (steps added until the error is within `completeness_bound`)."""
    from pipeline.ml.explain import (
        grad_cam,
        grad_cam_layer,
        integrated_gradients,
        occlusion,
        smoothgrad,
        vanilla_gradients,
    )

    integrated, completeness, steps = integrated_gradients(
        model, x, classes, steps=p.ig_steps, bound=completeness_bound, max_steps=p.ig_max_steps
    )
    maps = {
        "vanilla_gradients": vanilla_gradients(model, x, classes),
        "smoothgrad": smoothgrad(model, x, classes, p.smoothgrad_samples, p.smoothgrad_sigma, seed),
        "integrated_gradients": integrated,
        "occlusion": occlusion(model, x, classes, p.occlusion_patch),
    }
    layer = grad_cam_layer(model)
    if layer is not None:
        maps["grad_cam"] = grad_cam(model, x, classes, layer)
    return maps, completeness, steps


def faithfulness(
    model: Any,
    x: np.ndarray,
    classes: np.ndarray,
    maps: dict[str, np.ndarray],
    p: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """Deletion curves (mean over images) and their areas per method, against the mean of
    `random_orders` random deletion orders. Lower area: the method found the evidence."""
    from pipeline.ml.explain import deletion_curve

    curves, areas = {}, {}
    for method, attribution in maps.items():
        curve, area = deletion_curve(model, x, classes, attribution, p.deletion_steps)
        curves[method], areas[method] = curve.mean(axis=0), float(area.mean())
    rng = np.random.default_rng(seed)
    random_runs = [
        deletion_curve(model, x, classes, rng.random(x.shape[:3]), p.deletion_steps)
        for _ in range(p.random_orders)
    ]
    curves["random"] = np.mean([curve.mean(axis=0) for curve, _ in random_runs], axis=0)
    random_area = float(np.mean([area.mean() for _, area in random_runs]))
    return {
        "images": len(x),
        "deleted_fraction": np.linspace(0.0, 1.0, p.deletion_steps + 1).tolist(),
        "deletion_auc": areas,
        "deletion_auc_random": random_area,
        "beats_random": {method: area < random_area for method, area in areas.items()},
        "most_faithful": min(areas, key=areas.__getitem__),
        "mean_curves": {method: curve.tolist() for method, curve in curves.items()},
    }


def target_checks(report: dict[str, Any], targets: EvaluateTargets) -> dict[str, dict[str, Any]]:
    """The acceptance targets (params `targets.evaluate`), and each attribution method's
    deletion area against random deletion."""
    explained = report["explanations"]
    bound = targets.max_ig_completeness_error
    checks = {
        "ig_completeness_error_max": {
            "value": explained["ig_completeness_error"]["max"],
            "bound": bound,
            "met": explained["ig_completeness_error"]["max"] <= bound,
        }
    }
    faithful = explained["faithfulness"]
    for method, area in faithful["deletion_auc"].items():
        checks[f"deletion_auc_{method}_below_random"] = {
            "value": area,
            "bound": faithful["deletion_auc_random"],
            "met": bool(faithful["beats_random"][method]),
        }
    return checks


def sweep_indices(count: int, most: int, seed: int) -> np.ndarray:
    """The test images the attack, corruption and TFLite sweeps use: all of them up to `most`,
    else a seeded random `most` of them, in test-split order."""
    if count <= most:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, most, replace=False))


def evaluate_model(
    model: Any,
    variants: Mapping[str, tuple[TFLiteModel, Any, str]],
    test: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    p: EvaluateParams,
    seed: int,
    targets: EvaluateTargets | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything but speed, for the float model and its variants.

    `variants` maps a name to (LiteRT model, float parent, parent's file): the TFLite models
    have no gradients, so they face the adversarial images crafted on their float parent.
    Returns (report, the attribution maps of the grid images)."""
    from pipeline.ml.training import make_deterministic, predict_proba

    x, y = test
    make_deterministic(seed)

    def predict(images: np.ndarray) -> np.ndarray:
        return predict_proba(model, images)

    sweep = sweep_indices(len(y), p.max_images, seed)
    xs, ys = x[sweep], y[sweep]
    attacks = adversarial_sets(model, xs, ys, p, seed)
    corruptions = corruption_sets(xs, p, seed)
    adversarial = accuracy_curves(predict, attacks, ys)
    report: dict[str, Any] = {
        "test_images": len(y),
        "sweep_images": len(ys),
        "clean": clean_performance(predict(x), y, class_names, p.calibration_bins),
        "adversarial": {
            **adversarial,
            "robust_epsilon": p.robust_epsilon,
            "robust_accuracy": adversarial["pgd"][severity_key(p.robust_epsilon)],
            "pgd_steps": p.pgd_steps,
        },
        "corruptions": accuracy_curves(predict, corruptions, ys),
    }
    crafted: dict[int, Sets] = {id(model): attacks}
    report["variants"] = {}
    for name, (tflite, parent, parent_file) in variants.items():
        if id(parent) not in crafted:
            crafted[id(parent)] = adversarial_sets(parent, xs, ys, p, seed)
        report["variants"][name] = {
            "accuracy": accuracy(tflite.predict(x), y),
            "corruptions": accuracy_curves(tflite.predict, corruptions, ys),
            "transferred_attacks": {
                "crafted_on": parent_file,
                **accuracy_curves(tflite.predict, crafted[id(parent)], ys),
            },
            "kernels": tflite.kernels,  # read once run: XNNPACK may have declined the graph
        }
    chosen = explained_indices(y, p.explain_per_class, p.faithfulness_images)
    targets = targets or EvaluateTargets()
    bound = targets.max_ig_completeness_error
    maps, completeness, steps = attributions(model, x[chosen], y[chosen], p, seed, bound)
    grid = min(len(chosen), p.explain_per_class * min(len(np.unique(y)), GRID_CLASSES))
    report["explanations"] = {
        "methods": list(maps),
        "grid_images": chosen[:grid].tolist(),
        "ig_completeness_error": {
            "max": float(completeness.max()),
            "mean": float(completeness.mean()),
            "grid_images": completeness[:grid].tolist(),
            "steps_max": int(steps.max()),
            "steps_mean": float(steps.mean()),
        },
        "faithfulness": faithfulness(model, x[chosen], y[chosen], maps, p, seed),
    }
    report["targets"] = target_checks(report, targets)
    return report, {"images": x[chosen[:grid]], **{m: a[:grid] for m, a in maps.items()}}


def keras_speed(model: Any, x: np.ndarray, p: EvaluateParams) -> dict[str, float]:
    """The Keras model under tf.function: latency and throughput at batch 1 and a large batch."""
    from pipeline.ml.inference import keras_callers, latency_stats

    stats = latency_stats(
        keras_callers(model)["keras_tf_function"], x, p.latency_runs, p.throughput_batch
    )
    return {
        "latency_ms_batch1": stats["latency_ms_median"],
        "latency_ms_batch1_p95": stats["latency_ms_p95"],
        "throughput_per_s_batch1": 1e3 / stats["latency_ms_median"],
        "large_batch": p.throughput_batch,
        "latency_ms_large_batch": 1e3 * p.throughput_batch / stats["throughput_per_s"],
        "throughput_per_s_large_batch": stats["throughput_per_s"],
    }


def headline_metrics(report: EvaluateReport, speed: EvaluateSpeed) -> dict[str, float]:
    """Family-neutral names (`evaluate.pgd.eps_0.1`) for the lineage run's compare view."""
    clean, adversarial = report.clean, report.adversarial
    faithful = report.explanations.faithfulness
    robust = severity_key(adversarial.robust_epsilon)
    metrics = {
        LineageMetric.ACCURACY: clean.accuracy,
        "evaluate.macro_f1": clean.macro_f1,
        "evaluate.ece": clean.ece,
        LineageMetric.ROBUST_ACCURACY: adversarial.robust_accuracy,
        "evaluate.corruption_accuracy_mean": report.corruption_accuracy_mean,
        "evaluate.ig_completeness_error_max": report.explanations.ig_completeness_error.max,
        **{f"evaluate.fgsm.eps_{e}": value for e, value in adversarial.fgsm.items()},
        **{f"evaluate.pgd.eps_{e}": value for e, value in adversarial.pgd.items()},
        **{f"evaluate.deletion_auc.{m}": area for m, area in faithful.deletion_auc.items()},
        "evaluate.deletion_auc.random": faithful.deletion_auc_random,
    }
    for name, variant in report.variants.items():
        metrics[f"evaluate.{name}.accuracy"] = variant.accuracy
        metrics[f"evaluate.{name}.corruption_accuracy_mean"] = mean_accuracy(variant.corruptions)
        pgd = variant.transferred_attacks.pgd[robust]
        metrics[f"evaluate.{name}.transferred_pgd.eps_{robust}"] = pgd
    # Speed under its own names; LineageMetric.LATENCY (evaluate.latency_ms_batch1) among them.
    figures = speed.model_dump(exclude={"model_digest"})
    metrics |= {f"evaluate.{k}": float(v) for k, v in figures.items()}
    metrics[LineageMetric.SIZE] = float(report.model_bytes)
    return metrics
