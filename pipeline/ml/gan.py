"""A class-conditional DCGAN: the adversarial training step, seeded sampling, sample grids
during training, and the metrics that judge the generator with a trained classifier."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.core.cli import PipelineError
from pipeline.core.layout import SAMPLES_DIR
from pipeline.core.outputs import GanMetrics
from pipeline.core.params import (
    AdamParams,
    CNNParams,
    GanParams,
    Params,
    TrainCommon,
    TrainParams,
)
from pipeline.ml.figures import save_grid_png
from pipeline.ml.gan_metrics import agreement, balanced_labels, coverage, frechet_distance
from pipeline.ml.models import build_classifier, build_discriminator, build_generator
from pipeline.ml.training import (
    compile_classifier,
    console_progress,
    epochs_within,
    fit_classifier,
    make_deterministic,
    predict_proba,
    score,
)

SAMPLES_PER_ROW = 10
GRID_ROWS = 20
Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split name -> (images, labels)


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


def adam(p: AdamParams) -> keras.optimizers.Optimizer:
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
        # One row per class, for the first GRID_ROWS classes: a page holds no more rows.
        self.labels = balanced_labels(min(num_classes, GRID_ROWS), SAMPLES_PER_ROW)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        images = generate(self.model.generator, self.labels, self.seed)
        path = self.folder / f"epoch_{done:04d}.png"
        save_grid_png(path, images.reshape(-1, SAMPLES_PER_ROW, *images.shape[1:]))


def gan_epochs(p: GanParams, images: int) -> int:
    """gan.epochs, or fewer: as many whole epochs of full batches as gan.max_steps allows."""
    return epochs_within(p.epochs, p.max_steps, images // p.batch_size)


def train_gan(
    p: GanParams, train: tuple[np.ndarray, np.ndarray], num_classes: int, seed: int, samples: Path
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Fit the conditional GAN; sample grids go to `samples`. Returns (generator, losses)."""
    x, y = train
    image_shape = x.shape[1:]
    if len(x) < p.batch_size:
        raise PipelineError(
            f"gan.batch_size {p.batch_size} exceeds the {len(x)} training images: no full batch"
        )
    make_deterministic(seed)
    gan = ConditionalGAN(
        build_generator(p, image_shape, num_classes),
        build_discriminator(p, image_shape, num_classes),
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
    epochs = gan_epochs(p, len(x))
    if epochs < p.epochs:
        print(f"gan: {epochs} epochs of {p.epochs}: gan.max_steps {p.max_steps} reached")
    grids = SampleGrids(samples, p.sample_every, epochs, num_classes, seed)
    verbose, shown = console_progress("gan", epochs)
    history = gan.fit(data, epochs=epochs, callbacks=[grids, *shown], verbose=verbose)
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
    # No batch norm: the probe stays the small plain CNN, whatever the CNN family's defaults.
    probe = CNNParams(filters=[16, 32], dense_units=[64], dropout=0.25, batch_norm=False)
    small = TrainParams(cnn=probe)
    common = TrainCommon(epochs=p.probe_epochs, batch_size=64, early_stopping_patience=5)
    make_deterministic(seed)
    model = build_classifier("cnn", small, train[0].shape[1:], num_classes)
    compile_classifier(model, small.cnn.optimizer, common)
    fit_classifier(model, train, val, common, num_classes, verbose=0)
    return score(predict_proba(model, test[0]), test[1])["accuracy"]


def judge(
    generator: keras.Model,
    classifier: keras.Model,
    splits: Splits,
    num_classes: int,
    p: GanParams,
    seed: int,
) -> GanMetrics:
    """The GAN's metrics, all measured with the project's own CNN and real held-out data."""
    labels = balanced_labels(num_classes, p.eval_per_class)
    generated = generate(generator, labels, seed + 1)
    predicted = predict_proba(classifier, generated).argmax(axis=1)
    features = keras.Model(classifier.input, classifier.get_layer("probabilities").input)
    real = {split: predict_proba(features, splits[split][0]) for split in ("train", "test")}
    fake_features = predict_proba(features, generated)
    held_out = (generate(generator, labels, seed + 2), labels)  # GAN-train's validation set
    return GanMetrics(
        classifier_agreement=agreement(predicted, labels),
        frechet_distance=frechet_distance(fake_features, real["test"]),
        frechet_distance_real_floor=frechet_distance(real["train"], real["test"]),
        **coverage(predicted, num_classes),
        gan_train_accuracy=probe_accuracy(
            (generated, labels), held_out, splits["test"], p, num_classes, seed
        ),
        gan_test_accuracy=probe_accuracy(
            splits["train"], splits["val"], (generated, labels), p, num_classes, seed
        ),
        generated_per_class=p.eval_per_class,
    )


@dataclass(frozen=True)
class TrainedGan:
    generator: keras.Model
    losses: dict[str, list[float]]
    metrics: GanMetrics
    train_seconds: float  # logged to MLflow, never written: the outputs stay reproducible


def train_and_judge(
    params: Params, splits: Splits, num_classes: int, classifier: keras.Model, folder: Path
) -> TrainedGan:
    """Train the GAN on the train split (sample grids into `folder`), then judge it."""
    started = time.perf_counter()
    samples = folder / SAMPLES_DIR
    generator, losses = train_gan(params.gan, splits["train"], num_classes, params.seed, samples)
    seconds = time.perf_counter() - started
    metrics = judge(generator, classifier, splits, num_classes, params.gan, params.seed)
    return TrainedGan(generator, losses, metrics, seconds)
