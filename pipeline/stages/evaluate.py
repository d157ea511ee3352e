"""evaluate: clean accuracy and calibration, robustness to attacks and corruptions, speed, and
explanations of one trained classifier; its TFLite variants on the same corruptions and on
attacks transferred from their float parent.

Writes reports/evaluate/<name>.json (results), reports/evaluate/<name>_speed.json (latency,
throughput, wall time: they vary run to run) and reports/evaluate/<name>/ (PNG figures and the
CSV files behind `dvc plots`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import tracking
from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.io import atomic_path, write_json
from pipeline.core.layout import MODEL_FILE, MODELS_DIR, read_lineage
from pipeline.core.params import MODEL_NAMES, EvaluateParams, flatten, load_params
from pipeline.core.timing import StageTimer
from pipeline.data.prepared import PREPARED_DIR, load_prepared
from pipeline.stages.compress import COMPRESSED_DIR

REPORTS = Path("reports/evaluate")
PRUNED_PARENT = "pruned.keras"
# The issue's bound on Integrated Gradients' completeness (relative error per image).
MAX_IG_COMPLETENESS_ERROR = 0.05

Predict = Callable[[np.ndarray], np.ndarray]  # images -> class probabilities
Sets = dict[str, dict[float, np.ndarray]]  # perturbation -> severity -> perturbed images


def key(severity: float) -> str:
    """A severity as a JSON key and metric-name part: 0.1 -> "0.1", 2.0 -> "2"."""
    return f"{severity:g}"


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=1) == y))


def clean_performance(
    probabilities: np.ndarray, y: np.ndarray, num_classes: int, bins: int
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, the confusion matrix and calibration."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from pipeline.ml.robustness import calibration

    predicted = probabilities.argmax(axis=1)
    labels = list(range(num_classes))
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
        name: {key(severity): accuracy(predict(images), y) for severity, images in curve.items()}
        for name, curve in sets.items()
    }


def explained_indices(y: np.ndarray, per_class: int, total: int) -> np.ndarray:
    """The fixed image set: the first `per_class` test images of each class (for the grids),
    then the next test images in order, up to `total` (for the faithfulness curves)."""
    grid = [i for c in np.unique(y) for i in np.flatnonzero(y == c)[:per_class]]
    rest = [i for i in range(len(y)) if i not in set(grid)]
    return np.array(grid + rest[: max(0, total - len(grid))], dtype=int)


def attributions(
    model: Any, x: np.ndarray, classes: np.ndarray, p: EvaluateParams, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every method's H×W map per image for `classes`, and IG's completeness error per image."""
    from pipeline.ml.explain import (
        grad_cam,
        grad_cam_layer,
        integrated_gradients,
        occlusion,
        smoothgrad,
        vanilla_gradients,
    )

    integrated, completeness = integrated_gradients(model, x, classes, steps=p.ig_steps)
    maps = {
        "vanilla_gradients": vanilla_gradients(model, x, classes),
        "smoothgrad": smoothgrad(model, x, classes, p.smoothgrad_samples, p.smoothgrad_sigma, seed),
        "integrated_gradients": integrated,
        "occlusion": occlusion(model, x, classes, p.occlusion_patch),
    }
    layer = grad_cam_layer(model)
    if layer is not None:
        maps["grad_cam"] = grad_cam(model, x, classes, layer)
    return maps, completeness


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


def target_checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    explained = report["explanations"]
    checks = {
        "ig_completeness_error_max": {
            "value": explained["ig_completeness_error"]["max"],
            "bound": MAX_IG_COMPLETENESS_ERROR,
            "met": explained["ig_completeness_error"]["max"] <= MAX_IG_COMPLETENESS_ERROR,
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


def evaluate_model(
    model: Any,
    variants: dict[str, tuple[Predict, Any, str]],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    p: EvaluateParams,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything but speed, for the float model and its variants.

    `variants` maps a name to (predict, float parent, parent's file): the TFLite models have no
    gradients, so they face the adversarial images crafted on their float parent.
    Returns (report, the attribution maps of the grid images)."""
    from pipeline.ml.training import make_deterministic, predict_proba

    x, y = test
    make_deterministic(seed)

    def predict(images: np.ndarray) -> np.ndarray:
        return predict_proba(model, images)

    attacks = adversarial_sets(model, x, y, p, seed)
    corruptions = corruption_sets(x, p, seed)
    adversarial = accuracy_curves(predict, attacks, y)
    report: dict[str, Any] = {
        "test_images": len(y),
        "clean": clean_performance(predict(x), y, num_classes, p.calibration_bins),
        "adversarial": {
            **adversarial,
            "robust_epsilon": p.robust_epsilon,
            "robust_accuracy": adversarial["pgd"][key(p.robust_epsilon)],
            "pgd_steps": p.pgd_steps,
        },
        "corruptions": accuracy_curves(predict, corruptions, y),
    }
    crafted: dict[int, Sets] = {id(model): attacks}
    report["variants"] = {}
    for name, (run, parent, parent_file) in variants.items():
        if id(parent) not in crafted:
            crafted[id(parent)] = adversarial_sets(parent, x, y, p, seed)
        report["variants"][name] = {
            "accuracy": accuracy(run(x), y),
            "corruptions": accuracy_curves(run, corruptions, y),
            "transferred_attacks": {
                "crafted_on": parent_file,
                **accuracy_curves(run, crafted[id(parent)], y),
            },
        }
    chosen = explained_indices(y, p.explain_per_class, p.faithfulness_images)
    maps, completeness = attributions(model, x[chosen], y[chosen], p, seed)
    grid = min(len(chosen), p.explain_per_class * len(np.unique(y)))
    report["explanations"] = {
        "methods": list(maps),
        "grid_images": chosen[:grid].tolist(),
        "ig_completeness_error": {
            "max": float(completeness.max()),
            "mean": float(completeness.mean()),
            "grid_images": completeness[:grid].tolist(),
        },
        "faithfulness": faithfulness(model, x[chosen], y[chosen], maps, p, seed),
    }
    report["targets"] = target_checks(report)
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


def headline_metrics(report: dict[str, Any], speed: dict[str, float]) -> dict[str, float]:
    """Family-neutral names (`evaluate.pgd.eps_0.1`) for the lineage run's compare view."""
    clean, adversarial = report["clean"], report["adversarial"]
    metrics = {
        "evaluate.accuracy": clean["accuracy"],
        "evaluate.macro_f1": clean["macro_f1"],
        "evaluate.ece": clean["ece"],
        "evaluate.robust_accuracy": adversarial["robust_accuracy"],
        "evaluate.corruption_accuracy_mean": mean_curve_accuracy(report["corruptions"]),
        "evaluate.ig_completeness_error_max": report["explanations"]["ig_completeness_error"][
            "max"
        ],
    }
    for attack in ("fgsm", "pgd"):
        for epsilon, value in adversarial[attack].items():
            metrics[f"evaluate.{attack}.eps_{epsilon}"] = value
    faithful = report["explanations"]["faithfulness"]
    for method, area in faithful["deletion_auc"].items():
        metrics[f"evaluate.deletion_auc.{method}"] = area
    metrics["evaluate.deletion_auc.random"] = faithful["deletion_auc_random"]
    for name, variant in report["variants"].items():
        metrics[f"evaluate.{name}.accuracy"] = variant["accuracy"]
        metrics[f"evaluate.{name}.corruption_accuracy_mean"] = mean_curve_accuracy(
            variant["corruptions"]
        )
        metrics[f"evaluate.{name}.transferred_pgd.eps_{key(adversarial['robust_epsilon'])}"] = (
            variant["transferred_attacks"]["pgd"][key(adversarial["robust_epsilon"])]
        )
    metrics.update({f"evaluate.{k}": float(v) for k, v in speed.items()})
    if "model_bytes" in report:
        metrics["evaluate.model_bytes"] = float(report["model_bytes"])
    return metrics


def mean_curve_accuracy(curves: dict[str, dict[str, float]]) -> float:
    return float(np.mean([v for curve in curves.values() for v in curve.values()]))


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def plot_tables(report: dict[str, Any], y: np.ndarray, predicted: np.ndarray) -> dict[str, str]:
    """The CSV files `dvc plots` draws (see the top-level plots in dvc.yaml)."""
    adversarial = report["adversarial"]
    faithful = report["explanations"]["faithfulness"]
    curves = faithful["mean_curves"]
    return {
        "confusion.csv": _csv(
            ["actual", "predicted"], [[int(a), int(b)] for a, b in zip(y, predicted, strict=True)]
        ),
        "adversarial.csv": _csv(
            ["epsilon", "fgsm", "pgd"],
            [[e, adversarial["fgsm"][e], adversarial["pgd"][e]] for e in adversarial["fgsm"]],
        ),
        "reliability.csv": _csv(
            ["confidence", "accuracy", "count"],
            [
                [f"{b['confidence']:.6f}", f"{b['accuracy']:.6f}", b["count"]]
                for b in report["clean"]["reliability"]
                if b["count"]
            ],
        ),
        "deletion.csv": _csv(
            ["deleted_fraction", *curves],
            [
                [f"{fraction:.4f}", *(f"{curves[m][i]:.6f}" for m in curves)]
                for i, fraction in enumerate(faithful["deleted_fraction"])
            ],
        ),
    }


def write_figures(
    folder: Path, name: str, report: dict[str, Any], grid: dict[str, np.ndarray]
) -> None:
    from pipeline.ml.figures import (
        save_attribution_grid_png,
        save_confusion_png,
        save_curves_png,
        save_reliability_png,
    )

    clean = report["clean"]
    save_confusion_png(
        folder / "confusion.png", np.array(clean["confusion_matrix"]), f"{name}: confusion matrix"
    )
    save_reliability_png(folder / "reliability.png", clean["reliability"], clean["ece"], name)

    def floats(curve: dict[str, float]) -> dict[float, float]:
        return {float(k): v for k, v in curve.items()}

    adversarial = report["adversarial"]
    panels: dict[str, dict[str, dict[float, float]]] = {
        "adversarial (epsilon)": {
            "keras fgsm": floats(adversarial["fgsm"]),
            "keras pgd": floats(adversarial["pgd"]),
            **{
                f"tflite {variant} pgd (transferred)": floats(v["transferred_attacks"]["pgd"])
                for variant, v in report["variants"].items()
                if variant in ("int8", "pruned_int8")
            },
        }
    }
    for corruption, curve in report["corruptions"].items():
        # Severity 0 is the clean test set: every curve starts at its model's accuracy.
        panels[corruption.replace("_", " ")] = {
            "keras": {0.0: report["clean"]["accuracy"], **floats(curve)},
            **{
                f"tflite {variant}": {0.0: v["accuracy"], **floats(v["corruptions"][corruption])}
                for variant, v in report["variants"].items()
            },
        }
    save_curves_png(
        folder / "robustness.png", panels, f"{name}: accuracy under perturbation", "accuracy"
    )
    faithful = report["explanations"]["faithfulness"]
    areas = {**faithful["deletion_auc"], "random": faithful["deletion_auc_random"]}
    deletion = {
        f"{method} (AUC {areas[method]:.3f})": dict(
            zip(faithful["deleted_fraction"], curve, strict=True)
        )
        for method, curve in faithful["mean_curves"].items()
    }
    save_curves_png(
        folder / "deletion.png",
        {"deletion curves (lower is more faithful)": deletion},
        f"{name}: true-class probability as pixels are deleted",
        "true-class probability",
        xlabel="fraction of pixels deleted",
    )
    images = grid.pop("images")
    labels = [f"test #{i}" for i in report["explanations"]["grid_images"]]
    save_attribution_grid_png(folder / "attributions.png", images, grid, labels)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("evaluate", __doc__ or "")
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    name, p = args.model, params.evaluate
    timer = StageTimer(f"evaluate@{name}")
    with timer.phase("data"):
        prepared = load_prepared(PREPARED_DIR)
        lineage = read_lineage(MODELS_DIR / name)
    started = time.perf_counter()
    with timer.phase("imports"):
        from pipeline.ml.inference import load_tflite
        from pipeline.ml.models import load_keras
        from pipeline.ml.training import predict_proba

    # Every model file is checked before any work: a missing or corrupt one is named at once.
    with timer.phase("data"):
        model = load_keras(MODELS_DIR / name / MODEL_FILE)
        compressed = COMPRESSED_DIR / name
        pruned_file = compressed / PRUNED_PARENT
        pruned = load_keras(pruned_file) if pruned_file.exists() else None
        variants = {}
        for path in sorted(compressed.glob("*.tflite")):
            parent, parent_file = (
                (pruned, pruned_file)
                if path.stem.startswith("pruned") and pruned is not None
                else (model, MODELS_DIR / name / MODEL_FILE)
            )
            variants[path.stem] = (load_tflite(path).predict, parent, str(parent_file))
    num_classes = int(prepared.manifest["num_classes"])
    x, y = prepared["test"]
    with contextlib.ExitStack() as stack:
        with timer.phase("logging"):
            child = stack.enter_context(
                tracking.stage_run(lineage["run_id"], "evaluate", {"model_family": name})
            )
            tracking.log_params(child, {"seed": params.seed, **flatten(p, "evaluate")})
        with timer.phase("compute"):
            report, grid = evaluate_model(
                model, variants, prepared["test"], num_classes, p, params.seed
            )
            # The saved Keras model's size: what serving loads, and what promotion bounds.
            model_bytes = (MODELS_DIR / name / MODEL_FILE).stat().st_size
            report = {"model": name, "model_bytes": model_bytes, **report}
            speed = keras_speed(model, x, p)
            predicted = predict_proba(model, x).argmax(axis=1)
        folder = REPORTS / name
        with timer.phase("outputs"):
            with atomic_path(folder) as staging:
                staging.mkdir()
                for filename, text in plot_tables(report, y, predicted).items():
                    (staging / filename).write_text(text, encoding="utf-8")
                write_figures(staging, name, report, grid)
            speed["wall_time_s"] = time.perf_counter() - started
            write_json(REPORTS / f"{name}.json", report)
            write_json(REPORTS / f"{name}_speed.json", speed)
        with timer.phase("logging"), tracking.after_outputs([folder, REPORTS / f"{name}.json"]):
            metrics = headline_metrics(report, speed)
            tracking.log_metrics(child, metrics)
            tracking.log_metrics(lineage["run_id"], metrics)
            tracking.log_artifacts(
                child,
                [REPORTS / f"{name}.json", REPORTS / f"{name}_speed.json", folder],
                "evaluate",
            )
        timer.finish(functools.partial(tracking.log_metrics, lineage["run_id"]))
    unmet = [k for k, c in report["targets"].items() if not c["met"]]
    clean = report["clean"]
    print(
        f"evaluate: {name}: accuracy {clean['accuracy']:.4f}, ECE {clean['ece']:.4f}, "
        f"PGD@{p.robust_epsilon:g} {report['adversarial']['robust_accuracy']:.4f}, most faithful "
        f"{report['explanations']['faithfulness']['most_faithful']}; targets not met: "
        f"{unmet or 'none'} ({speed['wall_time_s']:.0f} s) -> {REPORTS / name}"
    )


if __name__ == "__main__":
    run_stage("evaluate", main)
