from typing import Any

import numpy as np
import pytest
import tf_keras as keras
from scipy import ndimage

from pipeline.core.io import history_csv
from pipeline.core.params import AugmentParams, parse_params
from pipeline.ml.models import build_classifier
from pipeline.ml.training import (
    augmenter,
    compile_classifier,
    encode_labels,
    fit_classifier,
    input_pipeline,
    make_deterministic,
    score,
)
from tests.conftest import make_prepared, synthetic_images

TINY: dict[str, dict[str, Any]] = {
    "common": {"epochs": 3, "batch_size": 16, "early_stopping_patience": 1},
    "fnn": {"hidden_units": [16], "dropout": 0.2},
}


def fit_once(seed: int, name: str = "fnn"):
    params = parse_params({"seed": seed, "train": TINY})
    x, y = synthetic_images(n_per_class=10)
    data = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    make_deterministic(seed)
    model = build_classifier(name, params.train, (8, 8, 1), 10)
    compile_classifier(model, params.train.fnn.optimizer, params.train.common)
    history = fit_classifier(model, data["train"], data["val"], params.train.common, 10, verbose=0)
    return model, history


def test_same_seed_gives_bit_identical_weights_and_history():
    model_a, history_a = fit_once(3)
    model_b, history_b = fit_once(3)
    assert history_a == history_b
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    model_c, _ = fit_once(4)
    assert not np.array_equal(model_a.get_weights()[0], model_c.get_weights()[0])


def test_score_accuracy_and_cross_entropy():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    result = score(probabilities, np.array([0, 1, 1]))
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])))


def test_categorical_loss_one_hot_encodes():
    common = parse_params(
        {"train": {"common": {"loss": "categorical_crossentropy", "label_smoothing": 0.1}}}
    ).train.common
    np.testing.assert_array_equal(
        encode_labels(np.array([2, 0]), common, 3), [[0, 0, 1], [1, 0, 0]]
    )


def test_history_csv_has_one_row_per_epoch():
    text = history_csv({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})
    assert text.splitlines() == ["epoch,loss,val_loss", "1,1,1.1", "2,0.5,0.7"]


def resumable_fit(folder, epochs: int, callbacks: list, every_s: float = 0.0, method="none"):
    """A tiny FNN fit for `epochs` epochs (no early stopping) with Resumable's callbacks, on
    clean batches or in the wrapper that adds attacked ones (`method` fgsm or pgd)."""
    from pipeline.ml.training import Resumable, trainer_for

    common = {**TINY["common"], "epochs": epochs, "early_stopping_patience": epochs}
    fnn = {**TINY["fnn"], "adversarial": {"method": method}}
    params = parse_params({"seed": 0, "train": {**TINY, "common": common, "fnn": fnn}})
    x, y = synthetic_images(n_per_class=10)
    data = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    make_deterministic(0)
    classifier = build_classifier("fnn", params.train, (8, 8, 1), 10)
    model = trainer_for(classifier, params.train.fnn.adversarial)
    compile_classifier(model, params.train.fnn.optimizer, params.train.common)
    resumable = Resumable(folder, every_s)
    fit_classifier(
        model,
        data["train"],
        data["val"],
        params.train.common,
        10,
        verbose=0,
        callbacks=[*callbacks, *resumable.callbacks()],
    )
    return resumable


@pytest.fixture
def four_seconds_an_epoch(monkeypatch):
    """PeriodicBackup's clock, moved on 4 s at each epoch's end (before the backup's check)."""
    import tf_keras as keras

    from pipeline.ml.training import PeriodicBackup

    now = [0.0]
    monkeypatch.setattr(PeriodicBackup, "clock", staticmethod(lambda: now[0]))
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: now.__setitem__(0, now[0] + 4.0)
    )


@pytest.fixture
def backups(monkeypatch) -> list[int]:
    """The 0-based epochs PeriodicBackup backed up after."""
    from pipeline.ml.training import PeriodicBackup

    done: list[int] = []
    real = PeriodicBackup._backup

    def recording(self, epoch, batch=0):
        done.append(epoch)
        real(self, epoch=epoch, batch=batch)

    monkeypatch.setattr(PeriodicBackup, "_backup", recording)
    return done


def test_backups_are_taken_once_every_interval_not_every_epoch(
    tmp_path, four_seconds_an_epoch, backups
):
    resumable_fit(tmp_path / "every10", 6, [four_seconds_an_epoch], every_s=10.0)
    assert backups == [2, 5]  # at 12 s and at 24 s
    backups.clear()
    resumable_fit(tmp_path / "every0", 4, [four_seconds_an_epoch], every_s=0.0)
    assert backups == [0, 1, 2, 3]


@pytest.mark.parametrize("method", ["none", "fgsm"])
def test_a_resumed_fit_reruns_the_epochs_logged_after_its_last_backup(
    tmp_path, four_seconds_an_epoch, backups, method
):
    """Backed up after epoch 3 (at 12 s), killed during epoch 5's end: the rerun resumes after
    epoch 3, and the history holds each of the 7 epochs once; so does adversarial training's
    wrapper."""
    import tf_keras as keras

    from pipeline.ml.training import Resumable

    class Killed(Exception):
        pass

    def kill(epoch, logs):
        if epoch == 4:
            raise Killed  # before the epoch's row and any backup of it

    folder = tmp_path / "fit"
    with pytest.raises(Killed):
        resumable_fit(
            folder,
            7,
            [four_seconds_an_epoch, keras.callbacks.LambdaCallback(on_epoch_end=kill)],
            every_s=10.0,
            method=method,
        )
    assert backups == [2]
    interrupted = Resumable(folder, every_s=10.0)
    assert interrupted.finished_epochs == 3
    assert len(interrupted.history()["loss"]) == 4  # one epoch logged after the backup
    started: list[int] = []
    resumable_fit(
        folder,
        7,
        [keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: started.append(epoch))],
        every_s=10.0,
        method=method,
    )
    assert started == [3, 4, 5, 6]  # 0-based: from the first epoch the backup lacked
    history = Resumable(folder).history()
    assert len(history["loss"]) == 7


class FirstEpochWeights(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            self.weights = self.model.get_weights()


def test_a_resumed_fit_keeps_early_stoppings_count_and_best_weights(tmp_path):
    """Validation labels the training labels contradict, so that validation loss is lowest after
    the first epoch and rises after it: with patience 3, an uninterrupted fit stops after epoch
    4 and keeps epoch 1's weights. Killed after epoch 3 (backed up after epoch 2), the resumed
    fit must stop at the same epoch with the same weights, not restart its count."""
    from pipeline.ml.training import Resumable

    common = {**TINY["common"], "epochs": 20, "early_stopping_patience": 3}
    fnn = {**TINY["fnn"], "dropout": 0.0, "optimizer": {"name": "adam", "learning_rate": 0.01}}
    params = parse_params({"seed": 0, "train": {**TINY, "common": common, "fnn": fnn}})
    x, y = synthetic_images(n_per_class=10)
    data = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    contradicted = (data["train"][0], (data["train"][1] + 1) % 10)

    def fit(folder, callbacks: list) -> tuple[keras.Model, dict[str, list[float]]]:
        make_deterministic(0)
        model = build_classifier("fnn", params.train, (8, 8, 1), 10)
        compile_classifier(model, params.train.fnn.optimizer, params.train.common)
        resumable = Resumable(folder)
        callbacks = [*callbacks, *resumable.callbacks()]
        fit_classifier(model, data["train"], contradicted, params.train.common, 10, callbacks)
        return model, resumable.history()

    first = FirstEpochWeights()
    whole, history = fit(tmp_path / "whole", [first])
    assert int(np.argmin(history["val_loss"])) == 0 and len(history["val_loss"]) == 4

    class Killed(Exception):
        pass

    def kill(epoch, logs):
        if epoch == 2:
            raise Killed  # before the epoch's row and its backup

    with pytest.raises(Killed):
        fit(tmp_path / "killed", [keras.callbacks.LambdaCallback(on_epoch_end=kill)])
    assert Resumable(tmp_path / "killed").finished_epochs == 2
    resumed, resumed_history = fit(tmp_path / "killed", [])
    assert len(resumed_history["val_loss"]) == 4  # stopped after epoch 4, as uninterrupted
    for model in (whole, resumed):
        for kept, best in zip(model.get_weights(), first.weights, strict=True):
            np.testing.assert_array_equal(kept, best)  # epoch 1's: from before the kill


def test_early_stoppings_state_from_another_epochs_backup_is_left_alone(tmp_path):
    """A kill between a backup's weights and early stopping's state leaves the state of an
    earlier epoch: it must not be restored onto the later weights."""
    from pipeline.ml.training import restore_early_stopping, save_early_stopping

    saved = keras.callbacks.EarlyStopping(restore_best_weights=True)
    saved.wait, saved.best, saved.best_epoch = 2, 0.25, 3
    saved.best_weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    path = tmp_path / "early_stopping.npz"
    save_early_stopping(saved, path, epoch=5)

    fresh = keras.callbacks.EarlyStopping(restore_best_weights=True)
    fresh.wait, fresh.best, fresh.best_epoch, fresh.best_weights = 0, np.inf, 0, None
    assert not restore_early_stopping(fresh, path, epoch=6)
    assert (fresh.wait, fresh.best, fresh.best_epoch, fresh.best_weights) == (0, np.inf, 0, None)
    assert restore_early_stopping(fresh, path, epoch=5)
    assert (fresh.wait, fresh.best, fresh.best_epoch) == (2, 0.25, 3)
    for restored, original in zip(fresh.best_weights, saved.best_weights, strict=True):
        np.testing.assert_array_equal(restored, original)


AUGMENT = AugmentParams(translation=0.2, rotation=15, zoom=0.1, contrast=0.2)


def augmented_epochs(seed: int, epochs: int = 2) -> list[np.ndarray]:
    """The training images each epoch of an augmented input pipeline hands the model."""
    x, y = synthetic_images(n_per_class=4)
    images = (x / 255.0).astype(np.float32)[..., None]
    make_deterministic(seed)
    batches = input_pipeline(images, y, 8, augment=augmenter(AUGMENT, seed))
    return [np.concatenate([b[0].numpy() for b in batches]) for _ in range(epochs)]


def test_augmentation_changes_every_epoch_and_replays_under_the_seed():
    first, second = augmented_epochs(5)
    x, _ = synthetic_images(n_per_class=4)
    original = (x / 255.0).astype(np.float32)[..., None]
    assert not np.allclose(first, original) and not np.allclose(first, second)
    assert first.min() >= 0 and first.max() <= 1  # still pixels in [0, 1]
    again = augmented_epochs(5)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
    assert not np.array_equal(first, augmented_epochs(6)[0])


def test_augmentation_leaves_the_trained_model_the_inference_graph_without_it():
    params = parse_params(
        {"seed": 0, "train": {**TINY, "fnn": {**TINY["fnn"], "augment": {"translation": 0.1}}}}
    )
    x, y = synthetic_images(n_per_class=10)
    data = make_prepared((x / 255.0).astype(np.float32)[..., None], y)
    make_deterministic(0)
    model = build_classifier("fnn", params.train, (8, 8, 1), 10)
    compile_classifier(model, params.train.fnn.optimizer, params.train.common)
    augment = augmenter(params.train.fnn.augment, 0)
    fit_classifier(
        model, data["train"], data["val"], params.train.common, 10, verbose=0, augment=augment
    )
    plain = build_classifier("fnn", params.train, (8, 8, 1), 10)
    assert [layer.name for layer in model.layers] == [layer.name for layer in plain.layers]
    plain.set_weights(model.get_weights())
    test = data["test"][0]
    np.testing.assert_array_equal(model.predict(test, verbose=0), plain.predict(test, verbose=0))
    # Predicting twice gives the same answer: nothing random is left at inference.
    np.testing.assert_array_equal(model.predict(test, verbose=0), model.predict(test, verbose=0))
    # And the fit saw the changed batches: the same seed without them learns other weights.
    make_deterministic(0)
    unaugmented = build_classifier("fnn", params.train, (8, 8, 1), 10)
    compile_classifier(unaugmented, params.train.fnn.optimizer, params.train.common)
    fit_classifier(unaugmented, data["train"], data["val"], params.train.common, 10, verbose=0)
    assert not np.array_equal(unaugmented.get_weights()[0], model.get_weights()[0])


def test_flips_only_when_asked():
    kinds = [type(layer).__name__ for layer in augmenter(AUGMENT, 0).layers]
    assert kinds == ["RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast"]
    flipped = augmenter(AUGMENT.model_copy(update={"horizontal_flip": True}), 0).layers
    assert isinstance(flipped[0], keras.layers.RandomFlip) and len(flipped) == 5
    assert not AugmentParams().active and AUGMENT.active


def whole_pixel_shifts(image: np.ndarray, most: int = 2) -> list[np.ndarray]:
    """`image` moved by every whole-pixel offset up to `most` either way, 0 moved into view."""
    offsets = range(-most, most + 1)
    return [
        ndimage.shift(image, (dy, dx, 0), order=0, cval=0.0) for dy in offsets for dx in offsets
    ]


def test_nearest_translation_moves_whole_pixels_and_bilinear_blends_them():
    x, _ = synthetic_images(n_per_class=2)
    images = (x / 255.0).astype(np.float32)[..., None]

    def translated(interpolation: str) -> np.ndarray:
        p = AugmentParams(translation=0.15, interpolation=interpolation)
        return augmenter(p, 3)(images, training=True).numpy()

    def whole(out: np.ndarray) -> list[bool]:
        pairs = zip(images, out, strict=True)
        return [any(np.array_equal(o, s) for s in whole_pixel_shifts(i)) for i, o in pairs]

    nearest = translated("nearest")
    assert all(whole(nearest))  # each digit moved by whole pixels, its strokes unblurred
    assert not np.array_equal(nearest, images)  # and moved
    assert not any(whole(translated("bilinear")))  # sub-pixel moves blend neighbouring pixels
