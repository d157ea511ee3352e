"""Attacks, calibration, corruptions and attributions on small real models."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline.core.params import TrainCommon, parse_params
from pipeline.ml.explain import (
    deletion_curve,
    grad_cam,
    integrated_gradients,
    occlusion,
    smoothgrad,
    vanilla_gradients,
)
from pipeline.ml.models import build_classifier
from pipeline.ml.robustness import (
    calibration,
    fgsm,
    gaussian_noise,
    occlude,
    pgd,
    rotate,
    shift,
)
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic
from tests.conftest import PLAIN, sign_agreement

COMMON = TrainCommon(epochs=4, batch_size=64, early_stopping_patience=4)


@pytest.fixture(scope="module")
def digits():
    from pipeline.data.sources import load_digits, scale_pixels
    from tests.conftest import make_prepared

    raw = load_digits()
    return make_prepared(scale_pixels(raw.x, raw.pixel_max), raw.y, seed=42)


@pytest.fixture(scope="module")
def cnn(digits):
    params = parse_params({"train": {"cnn": {**PLAIN, "filters": [8, 16], "dense_units": [32]}}})
    make_deterministic(0)
    model = build_classifier("cnn", params.train, (8, 8, 1), 10)
    compile_classifier(model, params.train.cnn.optimizer, COMMON)
    fit_classifier(model, digits["train"], digits["val"], COMMON, 10, verbose=0)
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.2])
def test_attacks_stay_within_epsilon_and_the_pixel_range(cnn, digits, epsilon):
    x, y = digits["test"]
    for adversarial in (fgsm(cnn, x, y, epsilon), pgd(cnn, x, y, epsilon, steps=5)):
        assert np.abs(adversarial - x).max() <= epsilon + 1e-6
        assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


def test_pgd_is_at_least_as_strong_as_fgsm(cnn, digits):
    x, y = digits["test"]
    clean = accuracy(cnn, x, y)
    for epsilon in (0.05, 0.1, 0.2):
        fgsm_accuracy = accuracy(cnn, fgsm(cnn, x, y, epsilon), y)
        pgd_accuracy = accuracy(cnn, pgd(cnn, x, y, epsilon, steps=10), y)
        assert pgd_accuracy <= fgsm_accuracy <= clean


def test_fgsm_matches_a_plainly_written_reference(cnn, digits):
    """The reference differentiates -log p(y) written out by hand, batch by batch."""
    x, y = digits["test"]
    epsilon = 0.1
    reference = []
    for start in range(0, len(x), 64):
        images = tf.Variable(x[start : start + 64])
        with tf.GradientTape() as tape:
            probabilities = cnn(images, training=False)
            picked = tf.reduce_sum(probabilities * tf.one_hot(y[start : start + 64], 10), axis=1)
            loss = -tf.math.log(picked)
        sign = np.sign(tape.gradient(loss, images).numpy())
        reference.append(np.clip(x[start : start + 64] + epsilon * sign, 0.0, 1.0))
    crafted, expected = fgsm(cnn, x, y, epsilon), np.concatenate(reference)
    assert abs(accuracy(cnn, crafted, y) - accuracy(cnn, expected, y)) <= 0.01
    # The perturbations themselves, pixel by pixel: the same direction wherever either moved.
    # Measured 1.0 here; the margin is for pixels whose gradient is zero in one computation.
    assert sign_agreement(crafted, expected, x) >= 0.99


def test_calibration_error_of_known_cases():
    y = np.zeros(100, dtype=int)
    overconfident = np.tile([0.9, 0.1], (100, 1))
    y_half = y.copy()
    y_half[:40] = 1  # 60% right at 90% confidence
    assert calibration(overconfident, y_half)["ece"] == pytest.approx(0.3)
    perfect = calibration(np.tile([0.6, 0.4], (100, 1)), y_half)
    assert perfect["ece"] == pytest.approx(0.0)
    bins = perfect["bins"]
    assert sum(b["count"] for b in bins) == 100 and len(bins) == 15


def test_corruptions():
    x = np.zeros((2, 8, 8, 1), np.float32)
    x[:, 2, 3] = 1.0
    np.testing.assert_array_equal(gaussian_noise(x, 0.0), x)
    assert gaussian_noise(x, 0.5).min() >= 0.0 and gaussian_noise(x, 0.5).max() <= 1.0
    assert shift(x, 1)[0, 3, 4, 0] == 1.0 and shift(x, 1)[0, 2, 3, 0] == 0.0
    np.testing.assert_allclose(rotate(x, 0.0), x, atol=1e-6)
    ones = np.ones((3, 8, 8, 1), np.float32)
    assert ((occlude(ones, 0.25) == 0).reshape(3, -1).sum(axis=1) == 16).all()


def test_integrated_gradients_is_complete(cnn, digits):
    x, y = digits["test"]
    _, error, steps = integrated_gradients(cnn, x[:8], y[:8], steps=256)
    assert error.max() < 0.05 and (steps == 256).all()  # no bound: the steps asked for


def test_integrated_gradients_adds_steps_only_where_completeness_fails(cnn, digits):
    """From 4 steps, each image's steps double until its completeness error is within 5%; an
    image refined to n steps has exactly the n-step integral's map."""
    x, y = digits["test"][0][:16], digits["test"][1][:16]
    _, coarse_error, _ = integrated_gradients(cnn, x, y, steps=4)
    maps, error, steps = integrated_gradients(cnn, x, y, steps=4, bound=0.05, max_steps=2048)
    assert coarse_error.max() > 0.05  # 4 steps are too few for some
    assert ((error <= 0.05) | (steps == 2048)).all()
    assert (steps[coarse_error <= 0.05] == 4).all() and (steps[coarse_error > 0.05] > 4).all()
    refined = int(np.argmax(steps))
    one = slice(refined, refined + 1)
    fixed, fixed_error, _ = integrated_gradients(cnn, x[one], y[one], steps=int(steps[refined]))
    np.testing.assert_allclose(maps[refined], fixed[0], rtol=1e-3, atol=1e-5)
    assert error[refined] == pytest.approx(fixed_error[0], rel=1e-2, abs=1e-5)


def test_maps_have_the_input_shape(cnn, digits):
    x, y = digits["test"][0][:4], digits["test"][1][:4]
    cam = grad_cam(cnn, x, y, "conv1_act")
    assert cam.shape == (4, 8, 8) and cam.min() >= 0.0 and cam.max() > 0.0
    for method in (vanilla_gradients, smoothgrad, occlusion):
        assert method(cnn, x, y).shape == (4, 8, 8)


def probability(model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return model(x, training=False).numpy()[np.arange(len(x)), classes].astype(np.float64)


def test_vanilla_gradients_match_finite_differences_of_the_class_probability(cnn, digits):
    """Where the probability is smooth (its slopes to either side agree), the gradient is the
    slope; ReLU and max-pooling kinks (flat background, tied maxima) are left out."""
    x, y = digits["test"][0][:2], digits["test"][1][:2]
    step, centre = 1e-3, probability(cnn, x, y)
    right, left = np.zeros(x.shape[:3]), np.zeros(x.shape[:3])
    for row in range(8):
        for column in range(8):
            up, down = x.copy(), x.copy()
            up[:, row, column] += step
            down[:, row, column] -= step
            right[:, row, column] = (probability(cnn, up, y) - centre) / step
            left[:, row, column] = (centre - probability(cnn, down, y)) / step
    gradients = vanilla_gradients(cnn, x, y)
    scale = np.abs(right).max()
    smooth = np.abs(right - left) <= 0.01 * scale
    assert smooth.mean() >= 0.8, smooth.mean()
    slopes = np.abs(right + left) / 2
    np.testing.assert_allclose(gradients[smooth], slopes[smooth], atol=0.01 * scale)


def test_smoothgrad_without_noise_is_the_plain_gradient(cnn, digits):
    x, y = digits["test"][0][:4], digits["test"][1][:4]
    np.testing.assert_allclose(
        smoothgrad(cnn, x, y, samples=3, sigma=0.0), vanilla_gradients(cnn, x, y), rtol=1e-5
    )
    noisy = smoothgrad(cnn, x, y, samples=3, sigma=0.15)
    assert not np.allclose(noisy, vanilla_gradients(cnn, x, y))  # the noise does change it


def test_occlusion_by_one_patch_over_the_whole_image_is_the_drop_to_black(cnn, digits):
    x, y = digits["test"][0][:4], digits["test"][1][:4]
    drop = probability(cnn, x, y) - probability(cnn, np.zeros_like(x), y)
    heat = occlusion(cnn, x, y, patch=8)
    np.testing.assert_allclose(heat, np.broadcast_to(drop[:, None, None], heat.shape), atol=1e-6)


def test_deletion_curve_of_an_oracle_beats_random():
    """A model whose class-0 evidence is exactly the top half of the image: the oracle
    attribution (its weights) deletes that evidence first."""
    inputs = keras.Input((8, 8, 1))
    logits = keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    weights = np.zeros((64, 2), np.float32)
    weights[:32, 0] = 0.5
    model.layers[2].set_weights([weights])
    x = np.ones((5, 8, 8, 1), np.float32)
    classes = np.zeros(5, dtype=int)
    oracle = np.broadcast_to(weights[:, 0].reshape(8, 8), (5, 8, 8))
    random = np.random.default_rng(0).random((5, 8, 8))
    _, oracle_area = deletion_curve(model, x, classes, oracle)
    curve, random_area = deletion_curve(model, x, classes, random)
    assert oracle_area.mean() < random_area.mean()
    assert curve[:, 0] == pytest.approx(curve[0, 0]) and curve[0, -1] == pytest.approx(0.5)
