import numpy as np
import pytest

from pipeline.core.params import GanParams
from pipeline.ml import gan_metrics
from pipeline.ml.gan import gan_epochs, generate, train_gan
from pipeline.ml.gan_metrics import (
    agreement,
    balanced_labels,
    coverage,
    frechet_distance,
    frechet_distance_from_stats,
)
from pipeline.ml.models import build_discriminator, build_generator
from tests.conftest import make_prepared, synthetic_images


@pytest.mark.parametrize(
    ("shape", "widths"),
    [
        ((8, 8, 1), [128, 64]),
        ((28, 28, 1), [64, 32]),
        ((16, 16, 1), [32, 16, 8]),
        ((8, 8, 1), [4]),
        ((25, 25, 3), [16, 8]),  # odd sides: generated at 28×28, centre-cropped
        ((28, 28, 3), [8, 8, 8]),  # three doublings overshoot 28: 32×32 cropped
        ((9, 14, 1), [8, 8]),
    ],
)
def test_generator_and_discriminator_shapes(shape, widths):
    p = GanParams(latent_dim=7, generator_widths=widths, discriminator_widths=[8, 16])
    generator = build_generator(p, shape, 10)
    discriminator = build_discriminator(p, shape, 10)
    latent = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    labels = np.arange(5, dtype=np.int32)
    images = generator([latent, labels], training=False).numpy()
    assert images.shape == (5, *shape)
    assert images.min() >= 0.0 and images.max() <= 1.0  # sigmoid: pixel space
    assert discriminator([images, labels], training=False).shape == (5, 1)


def test_a_generator_whose_doublings_overshoot_crops_the_centre():
    generator = build_generator(GanParams(generator_widths=[8, 8]), (25, 26, 3), 2)
    crop = generator.get_layer("crop")
    assert crop.input.shape[1:3] == (28, 28)  # a 7×7 seed map doubled twice
    assert crop.cropping == ((1, 2), (1, 1))
    assert "crop" not in [layer.name for layer in build_generator(GanParams(), (8, 8, 1), 2).layers]


def test_conditioning_changes_the_output():
    generator = build_generator(GanParams(latent_dim=8), (8, 8, 1), 10)
    latent = np.repeat(np.random.default_rng(1).standard_normal((1, 8)), 10, axis=0)
    images = generator([latent.astype(np.float32), np.arange(10, dtype=np.int32)]).numpy()
    flat = images.reshape(10, -1)
    # Same latent vector, different labels: every pair of images differs.
    distances = np.abs(flat[:, None] - flat[None]).sum(axis=-1)
    assert (distances[~np.eye(10, dtype=bool)] > 1e-3).all()
    # And the label alone decides: same label and latent, same image.
    again = generator([latent[:1].astype(np.float32), np.array([3], np.int32)]).numpy()
    np.testing.assert_allclose(again[0], images[3], atol=1e-6)


def test_frechet_distance_closed_form_for_two_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    # Diagonal covariances commute: Tr((SaSb)^1/2) = sum(sd_a * sd_b).
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    got = frechet_distance_from_stats(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2))
    assert got == pytest.approx(expected, rel=1e-9)
    # A full (rotated) covariance against itself shifted: only the mean term remains.
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    cov = rotation @ np.diag([1.0, 4.0, 0.25]) @ rotation.T
    assert frechet_distance_from_stats(mu_a, cov, mu_b, cov) == pytest.approx(5.0, rel=1e-6)


def test_frechet_distance_on_samples_is_symmetric_zero_on_identical_and_consistent():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 4))
    b = rng.normal(0.5, 2.0, size=(20000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    # Against the closed form 4 * (0.5^2 + (1 - 2)^2) = 5, up to sampling noise.
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.05)


def test_last_bit_changes_in_float32_features_move_the_statistic_but_not_the_reported_distance(
    monkeypatch: pytest.MonkeyPatch,
):
    """What another processor's kernels do to the CNN's features, with the same weights: the
    last bit of some of them differs. The full-precision statistic moves; the reported distance,
    at the precision float32 features carry, does not."""
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(32, 128))
    real = np.maximum(rng.normal(size=(1257, 32)) @ mixing, 0).astype(np.float32)
    held_out = np.maximum(rng.normal(size=(360, 32)) @ mixing, 0).astype(np.float32)
    moved: np.ndarray = real.copy().reshape(-1)
    changed = rng.choice(moved.size, 1000, replace=False)
    moved[changed] = np.nextafter(moved[changed], np.float32(np.inf))
    moved = moved.reshape(real.shape)

    reported = frechet_distance(real, held_out)
    assert frechet_distance(moved, held_out) == reported
    with monkeypatch.context() as full_precision:  # 17 digits: every bit of a float64
        full_precision.setattr(gan_metrics, "FRECHET_DIGITS", 17)
        statistic = frechet_distance(real, held_out)
        assert frechet_distance(moved, held_out) != statistic
    assert reported == pytest.approx(statistic, rel=1e-6)


def test_agreement_and_coverage():
    labels = balanced_labels(4, 3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    predicted = labels.copy()
    predicted[:2] = 1
    assert agreement(predicted, labels) == pytest.approx(10 / 12)
    full = coverage(labels, 4)
    assert full["all_classes_covered"] and full["predicted_class_entropy_ratio"] == pytest.approx(1)
    collapsed = coverage(np.zeros(12, dtype=int), 4)
    assert collapsed["classes_covered"] == 1 and not collapsed["all_classes_covered"]
    assert collapsed["predicted_class_entropy"] == pytest.approx(0.0)


def test_same_seed_same_losses_and_samples(tmp_path):
    x, y = synthetic_images(n_per_class=8)
    prepared = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    p = GanParams(
        latent_dim=8,
        generator_widths=[16, 8],
        discriminator_widths=[8],
        epochs=3,
        batch_size=16,
        sample_every=2,
        discriminator_steps=2,
    )
    gen_a, losses_a = train_gan(p, prepared["train"], 10, 5, tmp_path / "a")
    gen_b, losses_b = train_gan(p, prepared["train"], 10, 5, tmp_path / "b")
    assert losses_a == losses_b
    assert set(losses_a) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert len(losses_a["d_loss"]) == 3
    labels = np.arange(10)
    np.testing.assert_array_equal(generate(gen_a, labels, 0), generate(gen_b, labels, 0))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "epoch_0002.png",
        "epoch_0003.png",
    ]
    _, losses_c = train_gan(p, prepared["train"], 10, 6, tmp_path / "c")
    assert losses_c != losses_a


def test_max_steps_caps_the_epochs_so_cost_stops_growing_with_the_data(tmp_path, capsys):
    p = GanParams(epochs=200, max_steps=4000, batch_size=64)
    assert gan_epochs(p, 1257) == 200  # the digits' train split: 19 full batches an epoch
    assert gan_epochs(p, 3500) == 74  # mnist_5k's: 54 batches an epoch
    assert gan_epochs(p, 60_000) == 4
    assert gan_epochs(p, 10**7) == 1  # at least one epoch
    x, y = synthetic_images(n_per_class=8)
    prepared = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    per_epoch = len(prepared["train"][1]) // 16  # full batches an epoch
    small = GanParams(
        latent_dim=8,
        generator_widths=[8, 8],
        discriminator_widths=[8],
        epochs=5,
        max_steps=2 * per_epoch + 1,  # room for two epochs, not three
        batch_size=16,
    )
    _, losses = train_gan(small, prepared["train"], 10, 0, tmp_path)
    assert len(losses["d_loss"]) == 2
    assert (
        f"gan: 2 epochs of 5: gan.max_steps {2 * per_epoch + 1} reached" in capsys.readouterr().out
    )
    assert [path.name for path in tmp_path.iterdir()] == ["epoch_0002.png"]  # the last grid
