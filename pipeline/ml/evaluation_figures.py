"""The files evaluate writes beside its report: the CSV tables `dvc plots` draws and the PNG
figures the report page embeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.io import csv_text
from pipeline.core.outputs import EvaluateReport


def plot_tables(report: EvaluateReport, y: np.ndarray, predicted: np.ndarray) -> dict[str, str]:
    """The CSV files `dvc plots` draws (see the top-level plots in dvc.yaml)."""
    adversarial = report.adversarial
    faithful = report.explanations.faithfulness
    curves = faithful.mean_curves
    return {
        "confusion.csv": csv_text(
            ["actual", "predicted"], [[int(a), int(b)] for a, b in zip(y, predicted, strict=True)]
        ),
        "adversarial.csv": csv_text(
            ["epsilon", "fgsm", "pgd"],
            [[e, adversarial.fgsm[e], adversarial.pgd[e]] for e in adversarial.fgsm],
        ),
        "reliability.csv": csv_text(
            ["confidence", "accuracy", "count"],
            [
                [f"{b.confidence:.6f}", f"{b.accuracy:.6f}", b.count]
                for b in report.clean.reliability
                if b.count
            ],
        ),
        "deletion.csv": csv_text(
            ["deleted_fraction", *curves],
            [
                [f"{fraction:.4f}", *(f"{curves[m][i]:.6f}" for m in curves)]
                for i, fraction in enumerate(faithful.deleted_fraction)
            ],
        ),
    }


def write_figures(
    folder: Path, name: str, report: EvaluateReport, grid: dict[str, np.ndarray]
) -> None:
    from pipeline.ml.figures import (
        save_attribution_grid_png,
        save_confusion_png,
        save_curves_png,
        save_reliability_png,
    )

    clean = report.clean
    save_confusion_png(
        folder / "confusion.png",
        np.array(clean.confusion_matrix),
        f"{name}: confusion matrix",
        [scores.name for scores in clean.per_class],
    )
    bins = [b.model_dump() for b in clean.reliability]
    save_reliability_png(folder / "reliability.png", bins, clean.ece, name)

    def floats(curve: dict[str, float]) -> dict[float, float]:
        return {float(k): v for k, v in curve.items()}

    adversarial = report.adversarial
    panels: dict[str, dict[str, dict[float, float]]] = {
        "adversarial (epsilon)": {
            "keras fgsm": floats(adversarial.fgsm),
            "keras pgd": floats(adversarial.pgd),
            **{
                f"tflite {variant} pgd (transferred)": floats(v.transferred_attacks.pgd)
                for variant, v in report.variants.items()
                if variant in ("int8", "pruned_int8")
            },
        }
    }
    for corruption, curve in report.corruptions.items():
        # Severity 0 is the clean test set: every curve starts at its model's accuracy.
        panels[corruption.replace("_", " ")] = {
            "keras": {0.0: clean.accuracy, **floats(curve)},
            **{
                f"tflite {variant}": {0.0: v.accuracy, **floats(v.corruptions[corruption])}
                for variant, v in report.variants.items()
            },
        }
    save_curves_png(
        folder / "robustness.png", panels, f"{name}: accuracy under perturbation", "accuracy"
    )
    faithful = report.explanations.faithfulness
    areas = {**faithful.deletion_auc, "random": faithful.deletion_auc_random}
    deletion = {
        f"{method} (AUC {areas[method]:.3f})": dict(
            zip(faithful.deleted_fraction, curve, strict=True)
        )
        for method, curve in faithful.mean_curves.items()
    }
    save_curves_png(
        folder / "deletion.png",
        {"deletion curves (lower is more faithful)": deletion},
        f"{name}: true-class probability as pixels are deleted",
        "true-class probability",
        xlabel="fraction of pixels deleted",
    )
    images = grid.pop("images")
    labels = [f"test #{i}" for i in report.explanations.grid_images]
    save_attribution_grid_png(folder / "attributions.png", images, grid, labels)
