"""gan: train a class-conditional DCGAN on validated data and judge it with the train stage's CNN.

Writes models/gan/ (generator.keras, losses.csv, samples/epoch_*.png, lineage.json) and
reports/gan/metrics.json; its MLflow run is the GAN's lineage like any other model's.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.core import tracking
from pipeline.core.cli import PipelineError, run_stage, stage_parser
from pipeline.core.io import atomic_path, write_json
from pipeline.core.layout import MODEL_FILE, MODELS_DIR, read_lineage
from pipeline.core.params import (
    CNNParams,
    GanParams,
    Params,
    TrainCommon,
    TrainParams,
    flatten,
    load_params,
)
from pipeline.core.timing import StageTimer
from pipeline.data.prepared import PREPARED_DIR, Prepared, load_prepared
from pipeline.ml.figures import save_grid_png
from pipeline.ml.gan_metrics import agreement, balanced_labels, coverage, frechet_distance
from pipeline.ml.models import (
    build_classifier,
    build_discriminator,
    build_generator,
    load_keras,
    save_keras,
)
from pipeline.ml.training import (
    compile_classifier,
    fit_classifier,
    make_deterministic,
    predict_proba,
    score,
)
from pipeline.stages.train import history_csv
from pipeline.stages.validate import require_validated

GAN_DIR = MODELS_DIR / "gan"
GENERATOR_FILE = "generator.keras"
JUDGE = MODELS_DIR / "cnn" / MODEL_FILE  # the classifier that judges the samples
METRICS = Path("reports/gan/metrics.json")
SAMPLES_PER_ROW = 10


class ConditionalGAN(keras.Model):
    """Generator and discriminator trained adversarially; `fit` runs the custom step below."""

    def __init__(
        self, generator: keras.Model, discriminator: keras.Model, p: GanParams, num_classes: int
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.num_classes = p.latent_dim, num_classes
        self.discriminator_steps = p.discriminator_steps
        self.real_target = 1.0 - p.label_smoothing  # one-sided label smoothing
        self.bce = keras.losses.BinaryCrossentropy(from_logits=True)
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_real", "d_fake")
        }

    def compile(
        self, d_optimizer: keras.optimizers.Optimizer, g_optimizer: keras.optimizers.Optimizer
    ) -> None:
        super().compile()
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())  # reset by Keras at each epoch

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        images, labels = data
        batch = tf.shape(images)[0]
        for _ in range(self.discriminator_steps):
            latent = tf.random.normal((batch, self.latent_dim))
            fakes = self.generator([latent, labels], training=True)
            with tf.GradientTape() as tape:
                real_logits = self.discriminator([images, labels], training=True)
                fake_logits = self.discriminator([fakes, labels], training=True)
                d_loss = self.bce(tf.fill(tf.shape(real_logits), self.real_target), real_logits)
                d_loss += self.bce(tf.zeros_like(fake_logits), fake_logits)
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(
                zip(grads, self.discriminator.trainable_weights, strict=True)
            )
        latent = tf.random.normal((batch, self.latent_dim))
        wanted = tf.random.uniform((batch,), 0, self.num_classes, dtype=tf.int32)
        with tf.GradientTape() as tape:
            logits = self.discriminator(
                [self.generator([latent, wanted], training=True), wanted], training=True
            )
            g_loss = self.bce(tf.ones_like(logits), logits)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights, strict=True))
        for name, value in (
            ("d_loss", d_loss),
            ("g_loss", g_loss),
            ("d_real", tf.reduce_mean(tf.sigmoid(real_logits))),
            ("d_fake", tf.reduce_mean(tf.sigmoid(fake_logits))),
        ):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def adam(p: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(p.learning_rate, beta_1=p.beta_1, beta_2=p.beta_2)


def generate(generator: keras.Model, labels: np.ndarray, seed: int) -> np.ndarray:
    """Images for the given labels from seeded latent vectors (same seed, same images)."""
    latent_dim = generator.input_shape[0][-1]
    latent = np.random.default_rng(seed).standard_normal((len(labels), latent_dim))
    return generator.predict(
        [latent.astype(np.float32), labels.astype(np.int32)], batch_size=512, verbose=0
    )


class SampleGrids(keras.callbacks.Callback):
    """Every N epochs (and at the end), a grid with one row per class from fixed latents."""

    def __init__(self, folder: Path, every: int, epochs: int, num_classes: int, seed: int):
        super().__init__()
        self.folder, self.every, self.epochs, self.seed = folder, every, epochs, seed
        self.labels = balanced_labels(num_classes, SAMPLES_PER_ROW)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        images = generate(self.model.generator, self.labels, self.seed)
        path = self.folder / f"epoch_{done:04d}.png"
        save_grid_png(path, images.reshape(-1, SAMPLES_PER_ROW, *images.shape[1:]))


def train_gan(
    p: GanParams, prepared: Prepared, seed: int, samples: Path
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Fit the conditional GAN; sample grids go to `samples`. Returns (generator, losses)."""
    num_classes = int(prepared.manifest["num_classes"])
    x, y = prepared["train"]
    if len(x) < p.batch_size:
        raise PipelineError(
            f"gan.batch_size {p.batch_size} exceeds the {len(x)} training images: no full batch"
        )
    make_deterministic(seed)
    gan = ConditionalGAN(
        build_generator(p, prepared.image_shape, num_classes),
        build_discriminator(p, prepared.image_shape, num_classes),
        p,
        num_classes,
    )
    gan.compile(adam(p.discriminator_optimizer), adam(p.generator_optimizer))
    # Cache the arrays, then reshuffle every epoch (a cache after the shuffle would replay the
    # first epoch's order forever).
    data = (
        tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
        .cache()
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(p.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    grids = SampleGrids(samples, p.sample_every, p.epochs, num_classes, seed)
    history = gan.fit(data, epochs=p.epochs, callbacks=[grids], verbose=2)
    losses = {k: [float(v) for v in values] for k, values in history.history.items()}
    return gan.generator, losses


def probe_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    p: GanParams,
    num_classes: int,
    seed: int,
) -> float:
    """Accuracy on `test` of a small CNN fitted on `train` (the GAN-train/GAN-test probe)."""
    small = TrainParams(cnn=CNNParams(filters=[16, 32], dense_units=[64], dropout=0.25))
    common = TrainCommon(epochs=p.probe_epochs, batch_size=64, early_stopping_patience=5)
    make_deterministic(seed)
    model = build_classifier("cnn", small, train[0].shape[1:], num_classes)
    compile_classifier(model, small.cnn.optimizer, common)
    fit_classifier(model, train, val, common, num_classes, verbose=0)
    return score(predict_proba(model, test[0]), test[1])["accuracy"]


def judge(
    generator: keras.Model, classifier: keras.Model, prepared: Prepared, p: GanParams, seed: int
) -> dict[str, Any]:
    """The GAN's metrics, all measured with the project's own CNN and real held-out data."""
    num_classes = int(prepared.manifest["num_classes"])
    labels = balanced_labels(num_classes, p.eval_per_class)
    generated = generate(generator, labels, seed + 1)
    predicted = predict_proba(classifier, generated).argmax(axis=1)
    features = keras.Model(classifier.input, classifier.get_layer("probabilities").input)
    real = {split: predict_proba(features, prepared[split][0]) for split in ("train", "test")}
    fake_features = predict_proba(features, generated)
    held_out = (generate(generator, labels, seed + 2), labels)  # GAN-train's validation set
    return {
        "classifier_agreement": agreement(predicted, labels),
        "frechet_distance": frechet_distance(fake_features, real["test"]),
        "frechet_distance_real_floor": frechet_distance(real["train"], real["test"]),
        **coverage(predicted, num_classes),
        "gan_train_accuracy": probe_accuracy(
            (generated, labels), held_out, prepared["test"], p, num_classes, seed
        ),
        "gan_test_accuracy": probe_accuracy(
            prepared["train"], prepared["val"], (generated, labels), p, num_classes, seed
        ),
        "generated_per_class": p.eval_per_class,
    }


def lineage_params(params: Params) -> dict[str, Any]:
    return {"seed": params.seed, **flatten(params.data, "data"), **flatten(params.gan, "gan")}


def main(argv: Sequence[str] | None = None) -> None:
    timer = StageTimer("gan")
    args = stage_parser("gan", __doc__ or "").parse_args(argv)
    params = load_params(args.params)
    with timer.phase("data"):
        prepared = load_prepared(PREPARED_DIR)
        require_validated(prepared)
        classifier = load_keras(JUDGE)
        judge_run = read_lineage(JUDGE.parent)["run_id"]
    tags = {
        "model_family": "gan",
        "dvc_stage": "gan",
        "dataset": prepared.manifest["source"],
        "data_hash": prepared.content_hash,
        "seed": params.seed,
        "judge_model": str(JUDGE),
        "judge_run_id": judge_run,
        **params.mlflow.tags,
    }
    with contextlib.ExitStack() as stack:
        with timer.phase("logging"):
            run_id = stack.enter_context(tracking.lineage_run(params.experiment_name, "gan", tags))
            tracking.log_params(run_id, lineage_params(params))
        with atomic_path(GAN_DIR) as staging:  # models/gan/ appears whole or not at all
            with timer.phase("compute"):
                started = time.perf_counter()
                generator, losses = train_gan(
                    params.gan, prepared, params.seed, staging / "samples"
                )
                train_seconds = time.perf_counter() - started
                metrics = judge(generator, classifier, prepared, params.gan, params.seed)
            with timer.phase("outputs"):
                save_keras(generator, staging / GENERATOR_FILE)
                (staging / "losses.csv").write_text(history_csv(losses), encoding="utf-8")
                write_json(
                    staging / "lineage.json",
                    {"run_id": run_id, "experiment": params.experiment_name},
                )
        with timer.phase("outputs"):
            write_json(METRICS, metrics)
        # Logged after the outputs exist: a logging failure must not lose the generator.
        with timer.phase("logging"), tracking.after_outputs([GAN_DIR, METRICS]):
            tracking.log_series(
                run_id, {f"epoch/{key}": list(enumerate(v, 1)) for key, v in losses.items()}
            )
            # Wall time goes to MLflow only: metrics.json stays identical across identical runs.
            tracking.log_metrics(
                run_id,
                {**{key: float(v) for key, v in metrics.items()}, "train_seconds": train_seconds},
            )
            tracking.log_artifacts(run_id, [GAN_DIR / "samples", GAN_DIR / "losses.csv"], "gan")
            example = {
                "latent": np.zeros((2, params.gan.latent_dim), np.float32),
                "label": np.arange(2, dtype=np.int32),
            }
            tracking.log_keras_model(generator, example)
        timer.finish(functools.partial(tracking.log_metrics, run_id))
    summary = ", ".join(
        f"{key} {metrics[key]:.3f}"
        for key in (
            "classifier_agreement",
            "frechet_distance",
            "frechet_distance_real_floor",
            "gan_train_accuracy",
            "gan_test_accuracy",
        )
    )
    print(f"gan: {summary}, trained in {train_seconds:.0f} s -> {GAN_DIR}, MLflow run {run_id}")


if __name__ == "__main__":
    run_stage("gan", main)
