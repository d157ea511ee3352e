import numpy as np
import pytest

from pipeline.models import build_classifier
from pipeline.params import parse_params
from pipeline.train import history_csv
from pipeline.training import (
    compile_classifier,
    encode_labels,
    fit_classifier,
    make_deterministic,
    score,
)
from tests.conftest import make_prepared, synthetic_images

TINY = {
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
