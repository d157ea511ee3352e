"""What compression achieved: every variant measured through the LiteRT interpreter, the
acceptance targets checked, and the tables and plot data the compress stage writes. What any
machine computes alike (accuracy, size, sparsity) and what it measures (speed) come apart."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.cli import first_line
from pipeline.core.io import csv_text
from pipeline.core.layout import compress_speed
from pipeline.core.outputs import Check, Checks, CompressReport, CompressSpeed, UnsupportedVariant
from pipeline.core.params import CompressTargets
from pipeline.core.reproducibility import tflite_kernels


def measure(
    variants: list[Any],
    model: Any,
    keras_file: Path,
    test: tuple[np.ndarray, np.ndarray],
    runs: int,
    batch: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy, sparsity and size of the float Keras model and of each variant; and apart,
    their speed: how the Keras model runs per way of calling it, and each variant in LiteRT."""
    from pipeline.ml.compression import weight_sparsity
    from pipeline.ml.inference import (
        TFLiteModel,
        keras_callers,
        latency_stats,
        sizes,
        tensor_dtypes,
    )

    x, y = test
    keras_bytes = keras_file.read_bytes()
    baseline: dict[str, Any] = {
        "accuracy": float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y)),
        "sparsity": weight_sparsity(model),
        "size_bytes": len(keras_bytes),
        "size_gzip_bytes": len(gzip.compress(keras_bytes, 9)),
    }
    speed: dict[str, Any] = {
        "keras_float": {
            name: latency_stats(call, x, runs, batch) for name, call in keras_callers(model).items()
        },
        "variants": {},
    }
    results: dict[str, Any] = {}
    for variant in variants:
        if variant.unsupported:
            results[variant.name] = {
                "supported": False,
                "description": variant.description,
                "reason": variant.unsupported,
            }
            continue
        # Speed as a device runs the model (XNNPACK where it can); accuracy on the mode's kernels.
        runner = TFLiteModel(variant.tflite, kernels="xnnpack")
        measured = runner if tflite_kernels() == "xnnpack" else TFLiteModel(variant.tflite)
        try:
            predicted = measured.predict(x, batch).argmax(axis=1)
            speed["variants"][variant.name] = latency_stats(runner.invoke, x, runs, batch)
        except (RuntimeError, ValueError) as error:  # converted, but LiteRT cannot run it
            results[variant.name] = {
                "supported": False,
                "description": variant.description,
                "reason": f"fails at run time in LiteRT: {first_line(error)}",
            }
            continue
        source = variant.source.predict(x, verbose=0).argmax(axis=1)
        results[variant.name] = {
            "supported": True,
            "description": variant.description,
            "kernels": runner.kernels,
            "accuracy": float(np.mean(predicted == y)),
            "accuracy_kernels": measured.kernels,
            # The Keras model it was converted from: a gap here is the converter's doing.
            "source_keras_accuracy": float(np.mean(source == y)),
            "sparsity": weight_sparsity(variant.source),
            **sizes(variant.tflite),
            "dtypes": tensor_dtypes(variant.tflite, runner.kernels),
        }
    return {"keras_float": baseline, "variants": results}, speed


def target_checks(
    report: dict[str, Any], target_sparsity: float, targets: CompressTargets
) -> Checks:
    """The acceptance targets (params `targets.compress`) as measured values next to their
    bounds, and whether the pruning-preserving variant kept the sparsity it is named for."""
    base, variants = report["keras_float"], report["variants"]
    checks: Checks = {}

    def check(name: str, variant: str, value: float, bound: float, at_least: bool) -> None:
        made = Check.at_least if at_least else Check.at_most
        checks[name] = made(value, bound, variant)

    ok = {name: v for name, v in variants.items() if v["supported"]}
    if "pruned" in ok:
        check(
            "pruning_loss_points",
            "pruned",
            100 * (base["accuracy"] - ok["pruned"]["accuracy"]),
            targets.max_pruning_loss_points,
            False,
        )
    if "float32" in ok:
        for name in ("int8", "pruned_int8", "qat_int8", "pruned_qat_int8"):
            if name in ok:
                check(
                    f"{name}_loss_points_vs_float_tflite",
                    name,
                    100 * (ok["float32"]["accuracy"] - ok[name]["accuracy"]),
                    targets.max_int8_loss_points,
                    False,
                )
    if "pruned_qat_int8" in ok:
        # A layer the scheme leaves without its sparsity mask has its pruned zeros moved by QAT
        # (tfmot's own layout did so before every ReLU): measured, not assumed.
        sparsity = ok["pruned_qat_int8"]["sparsity"]
        check("pruned_qat_int8_sparsity", "pruned_qat_int8", sparsity, target_sparsity - 0.01, True)
    if "pruned_int8" in ok:
        check(
            "gzip_ratio_keras_to_pruned_int8",
            "pruned_int8",
            base["size_gzip_bytes"] / ok["pruned_int8"]["size_gzip_bytes"],
            targets.min_gzip_ratio,
            True,
        )
    return checks


def speed_checks(speed: dict[str, Any], targets: CompressTargets) -> Checks:
    """The speed target: single-image latency of Keras under tf.function over the int8 model's."""
    if "int8" not in speed["variants"]:
        return {}
    ratio = (
        speed["keras_float"]["keras_tf_function"]["latency_ms_median"]
        / speed["variants"]["int8"]["latency_ms_median"]
    )
    return {
        "latency_ratio_tf_function_to_int8": Check.at_least(
            ratio, targets.min_latency_ratio, "int8"
        )
    }


def tradeoff_points(report: CompressReport) -> list[dict[str, Any]]:
    """Size against accuracy: the float Keras model, then each supported variant."""
    base = report.keras_float
    sized = {"keras_float": (base.size_gzip_bytes, base.accuracy)}
    sized |= {name: (v.size_gzip_bytes, v.accuracy) for name, v in report.supported.items()}
    return [
        {"variant": name, "size_gzip_kib": size / 1024, "accuracy": accuracy}
        for name, (size, accuracy) in sized.items()
    ]


def points_csv(points: list[dict[str, Any]]) -> str:
    return csv_text(
        ["variant", "size_gzip_kib", "accuracy"],
        ([p["variant"], f"{p['size_gzip_kib']:.3f}", f"{p['accuracy']:.6f}"] for p in points),
    )


def markdown_table(name: str, report: CompressReport) -> str:
    base = report.keras_float
    lines = [
        f"# Compression of `{name}`",
        "",
        "| variant | accuracy (kernels) | sparsity | size (B) | gzipped (B) | runs on |",
        "|---|---|---|---|---|---|",
        f"| float Keras | {base.accuracy:.4f} | {base.sparsity:.3f} "
        f"| {base.size_bytes} | {base.size_gzip_bytes} | TensorFlow |",
    ]
    for variant, v in report.variants.items():
        if isinstance(v, UnsupportedVariant):
            lines.append(f"| {variant} | unsupported: {v.reason} | | | | |")
            continue
        lines.append(
            f"| {variant} | {v.accuracy:.4f} ({v.accuracy_kernels}) | {v.sparsity:.3f} "
            f"| {v.size_bytes} | {v.size_gzip_bytes} | {v.kernels} |"
        )
    lines += ["", "| target | variant | measured | bound | met |", "|---|---|---|---|---|"]
    for check, c in report.targets.items():
        lines.append(
            f"| {check} | {c.variant} | {c.value:.3f} | {c.bound} | {'yes' if c.met else 'NO'} |"
        )
    lines += [
        "",
        "TFLite models run in the LiteRT interpreter: accuracy on the kernels named beside it, "
        "speed on what LiteRT runs the model on by default. Speed is measured, so it differs from "
        f"run to run and machine to machine: `{compress_speed(name)}`, the report page "
        "and the MLflow run hold it.",
    ]
    return "\n".join(lines) + "\n"


def headline_metrics(report: CompressReport) -> dict[str, float]:
    """Family-neutral names (`compress.int8.accuracy`) for the lineage run's compare view."""
    metrics: dict[str, float] = {}
    for variant, v in report.supported.items():
        values = {
            "accuracy": v.accuracy,
            "sparsity": v.sparsity,
            "size_bytes": v.size_bytes,
            "size_gzip_bytes": v.size_gzip_bytes,
        }
        metrics |= {f"compress.{variant}.{key}": float(x) for key, x in values.items()}
    return metrics


def speed_metrics(speed: CompressSpeed) -> dict[str, float]:
    """`compress.<variant>.latency_ms_median` for each TFLite variant, beside its accuracy, and
    each speed target's measured value (`compress.target.<name>`), as this machine met it."""
    return {
        **{
            f"compress.{variant}.latency_ms_median": s.latency_ms_median
            for variant, s in speed.variants.items()
        },
        **{
            f"compress.target.{name}": check.value
            for name, check in speed.targets.items()
            if check.value is not None
        },
    }
