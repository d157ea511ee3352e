"""gan: train a class-conditional DCGAN on validated data and judge it with the train stage's CNN.

Writes models/gan/ (generator.keras, losses.csv, samples/epoch_*.png) and
reports/gan/metrics.json; its MLflow run is the GAN's lineage like any other model's, tagged with
the generator file's digest.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.io import atomic_path, history_csv
from pipeline.core.outputs import GanMetrics
from pipeline.core.params import Params, flatten
from pipeline.core.stage import open_run, start
from pipeline.data.prepared import Prepared, load_prepared
from pipeline.data.validation_results import require_validated
from pipeline.ml.artifacts import load_keras, save_keras
from pipeline.ml.gan import TrainedGan, train_and_judge


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("gan", __doc__, argv)
    with timer.phase("data"):
        prepared = load_prepared()
        require_validated(prepared)
        classifier = load_keras(layout.model_file(layout.JUDGE))
    with contextlib.ExitStack() as stack:
        opening = tracking.lineage_run(
            params.experiment_name, "gan", lineage_tags(params, prepared)
        )
        run = open_run(stack, timer, opening, lineage_params(params))
        with atomic_path(layout.GAN_DIR) as staging:  # models/gan/ appears whole or not at all
            with timer.phase("compute"):
                splits, classes = prepared.splits, prepared.num_classes
                gan = train_and_judge(params, splits, classes, classifier, staging)
            with timer.phase("outputs"):
                write_generator(staging, gan)
        with timer.phase("outputs"):
            gan.metrics.write(layout.GAN_METRICS)
        with timer.phase("logging"), tracking.after_outputs([layout.GAN_DIR, layout.GAN_METRICS]):
            tracking.record_model(run, layout.GAN_DIR / layout.GENERATOR_FILE)  # first: its key
            log_gan(run, gan, params.gan.latent_dim)
            tracking.log_datasets(run, prepared.manifest, params.data.model_dump())
        timer.finish(functools.partial(tracking.log_metrics, run))
    seconds = f"trained in {gan.train_seconds:.0f} s"
    print(f"gan: {summary(gan.metrics)}, {seconds} -> {layout.GAN_DIR}, MLflow run {run}")


def lineage_params(params: Params) -> dict[str, Any]:
    return {"seed": params.seed, **flatten(params.data, "data"), **flatten(params.gan, "gan")}


def lineage_tags(params: Params, prepared: Prepared) -> dict[str, Any]:
    judge_model = layout.model_file(layout.JUDGE)
    return {
        **tracking.data_tags(prepared.manifest, params.seed, params.mlflow.tags),
        "model_family": "gan",
        "dvc_stage": "gan",
        "judge_model": str(judge_model),
        "judge_run_id": tracking.lineage_of(params.experiment_name, judge_model),
    }


def write_generator(folder: Path, gan: TrainedGan) -> None:
    save_keras(gan.generator, folder / layout.GENERATOR_FILE)
    (folder / layout.LOSSES_FILE).write_text(history_csv(gan.losses), encoding="utf-8")


def log_gan(run: str, gan: TrainedGan, latent_dim: int) -> None:
    losses = gan.losses
    tracking.log_series(run, {f"epoch/{key}": list(enumerate(v, 1)) for key, v in losses.items()})
    # Wall time goes to MLflow only: metrics.json stays identical across identical runs.
    values = {key: float(v) for key, v in gan.metrics.model_dump().items()}
    tracking.log_metrics(run, {**values, "train_seconds": gan.train_seconds})
    outputs = [layout.GAN_DIR / layout.SAMPLES_DIR, layout.GAN_DIR / layout.LOSSES_FILE]
    tracking.log_artifacts(run, outputs, "gan")
    example = {
        "latent": np.zeros((2, latent_dim), np.float32),
        "label": np.arange(2, dtype=np.int32),
    }
    tracking.log_keras_model(run, gan.generator, example)


def summary(metrics: GanMetrics) -> str:
    return (
        f"classifier_agreement {metrics.classifier_agreement:.3f}, "
        f"frechet_distance {metrics.frechet_distance:.3f}, "
        f"frechet_distance_real_floor {metrics.frechet_distance_real_floor:.3f}, "
        f"gan_train_accuracy {metrics.gan_train_accuracy:.3f}, "
        f"gan_test_accuracy {metrics.gan_test_accuracy:.3f}"
    )


if __name__ == "__main__":
    run_stage("gan", main)
