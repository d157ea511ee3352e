"""compress: prune, quantize (post-training and quantization-aware) and convert one trained
classifier to TFLite; measure every variant through the LiteRT interpreter.

Writes models/compressed/<name>/ (the .tflite files and pruned.keras) and reports/compress/
(<name>.json, a Markdown table, the size-vs-accuracy trade-off as PNG and as DVC plot data);
the variants' measured speed goes to reports/measured/compress/<name>.json and to MLflow.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.io import atomic_path, file_digest, write_text
from pipeline.core.outputs import CompressReport, CompressSpeed, unmet
from pipeline.core.params import Params, flatten
from pipeline.core.stage import open_run, start
from pipeline.data.prepared import Prepared, load_prepared

REPORT_FILES = (".json", ".md", "_tradeoff.png", "_tradeoff.csv")  # reports/compress/<name>*


def main(argv: Sequence[str] | None = None) -> None:
    params, name, timer = start("compress", __doc__, argv, per_family=True)
    with timer.phase("data"):
        prepared = load_prepared()
    timer.imports("pipeline.ml.artifacts", "pipeline.ml.compression", "pipeline.ml.models")
    with timer.phase("data"):
        model = load_model(name)
        lineage = tracking.lineage_of(params.experiment_name, layout.model_file(name))
    with contextlib.ExitStack() as stack:
        logged = {"seed": params.seed, **flatten(params.compress, "compress")}
        child = tracking.stage_run(lineage, "compress", {"model_family": name})
        run = open_run(stack, timer, child, logged)
        with timer.phase("compute"):
            variants, report, speed = compress(
                name, model, params, prepared, layout.model_file(name)
            )
        with timer.phase("outputs"):
            write_outputs(name, variants, report, speed)
        outputs = [layout.compressed_dir(name), layout.compress_report(name)]
        with timer.phase("logging"), tracking.after_outputs(outputs):
            log_compression(run, lineage, name, report, speed)
        timer.finish(functools.partial(tracking.log_metrics, lineage))
    print(summary(name, report, speed))


def load_model(name: str) -> Any:
    from pipeline.ml.artifacts import load_keras

    return load_keras(layout.model_file(name))


def compress(
    name: str, model: Any, params: Params, prepared: Prepared, keras_file: Path
) -> tuple[list[Any], CompressReport, CompressSpeed]:
    """Every variant of `model` (saved as `keras_file`), the report that checks them against the
    targets, and their measured speed."""
    from pipeline.ml.compression import make_variants
    from pipeline.ml.compression_report import measure, speed_checks, target_checks
    from pipeline.ml.models import build_classifier

    p, classes = params.compress, prepared.num_classes
    # The same architecture without batch norm, for folding before pruning-preserving QAT.
    block = params.train.model(name).model_copy(update={"batch_norm": False})
    plain = params.train.model_copy(update={name: block})
    variants = make_variants(
        model,
        prepared["train"],
        p,
        params.train.common,
        classes,
        params.seed,
        build_plain=lambda: build_classifier(name, plain, prepared.image_shape, classes),
    )
    measured, speed = measure(
        variants, model, keras_file, prepared["test"], p.latency_runs, p.throughput_batch
    )
    targets = target_checks(measured, p.target_sparsity, params.targets.compress)
    return (
        variants,
        CompressReport.model_validate({**measured, "targets": targets}),
        CompressSpeed.model_validate(
            {
                **speed,
                "targets": speed_checks(speed, params.targets.compress),
                "model_digest": file_digest(keras_file),
            }
        ),
    )


def write_outputs(
    name: str, variants: list[Any], report: CompressReport, speed: CompressSpeed
) -> None:
    from pipeline.ml.artifacts import save_keras
    from pipeline.ml.compression_report import markdown_table, points_csv, tradeoff_points
    from pipeline.ml.figures import save_tradeoff_png

    with atomic_path(layout.compressed_dir(name)) as staging:
        staging.mkdir()
        for variant in variants:
            if variant.tflite and variant.name in report.supported:  # what LiteRT can run
                (staging / f"{variant.name}.tflite").write_bytes(variant.tflite)
            if variant.name == "pruned" and variant.source is not None:
                save_keras(variant.source, staging / layout.PRUNED_FILE)
    points = tradeoff_points(report)
    report.write(layout.compress_report(name))
    write_text(layout.compress_report(name, ".md"), markdown_table(name, report))
    write_text(layout.compress_report(name, "_tradeoff.csv"), points_csv(points))
    tradeoff = layout.compress_report(name, "_tradeoff.png")
    save_tradeoff_png(tradeoff, points, f"{name}: size vs accuracy")
    speed.write(layout.compress_speed(name))


def log_compression(
    run: str, lineage_run: str, name: str, report: CompressReport, speed: CompressSpeed
) -> None:
    from pipeline.ml.compression_report import headline_metrics, speed_metrics

    metrics = headline_metrics(report) | speed_metrics(speed)
    tracking.log_metrics(run, metrics)
    tracking.log_metrics(lineage_run, metrics)
    reports = [layout.compress_report(name, suffix) for suffix in REPORT_FILES]
    tracking.log_artifacts(run, [*reports, layout.compressed_dir(name)], "compress")
    # Its own folder: the measured file has the report's name.
    tracking.log_artifacts(run, [layout.compress_speed(name)], "compress/measured")


def summary(name: str, report: CompressReport, speed: CompressSpeed) -> str:
    unsupported = [k for k, v in report.variants.items() if not v.supported]
    return (
        f"compress: {name}: {len(report.supported)} variants"
        f"{f', unsupported: {unsupported}' if unsupported else ''}; targets not met: "
        f"{unmet(report.targets) or 'none'}, speed targets not met on this machine: "
        f"{unmet(speed.targets) or 'none'} -> {layout.compressed_dir(name)}, "
        f"{layout.compress_report(name, '.md')}"
    )


if __name__ == "__main__":
    run_stage("compress", main)
