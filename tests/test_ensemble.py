"""The ensemble of the three families on small real models trained on the digits: its
probabilities are the mean of its members', and every figure of its report is what those mean
probabilities score."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.outputs import EnsembleReport
from pipeline.core.params import EvaluateParams, TrainCommon, parse_params
from pipeline.ml.ensemble import MeanOfMembers, evaluate_ensemble, mean_probabilities
from pipeline.ml.models import build_classifier
from pipeline.ml.robustness import fgsm, shift
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic
from tests.conftest import PLAIN, PLAIN_LSTM

COMMON = TrainCommon(epochs=3, batch_size=64, early_stopping_patience=3)
TRAIN = {
    "fnn": {**PLAIN, "hidden_units": [32]},
    "cnn": {**PLAIN, "filters": [8], "dense_units": [16]},
    "lstm": {**PLAIN_LSTM, "units": [16], "dense_units": []},
}
QUICK = EvaluateParams(
    epsilons=[0.0, 0.1],
    robust_epsilon=0.1,
    pgd_steps=3,
    noise_sigmas=[0.2],
    occlusion_fractions=[0.25],
    shifts=[1],
    rotations=[10.0],
    max_images=150,  # a seeded sample of the test split, as evaluate draws it
)


@pytest.fixture(scope="module")
def members():
    from pipeline.data.sources import load_digits, scale_pixels
    from tests.conftest import make_prepared

    raw = load_digits()
    prepared = make_prepared(scale_pixels(raw.x, raw.pixel_max), raw.y, seed=42)
    train = parse_params({"train": TRAIN}).train
    models = {}
    for name in TRAIN:
        make_deterministic(0)
        model = build_classifier(name, train, prepared.image_shape, 10)
        compile_classifier(model, train.model(name).optimizer, COMMON)
        fit_classifier(model, prepared["train"], prepared["val"], COMMON, 10, verbose=0)
        models[name] = model
    return models, prepared


def test_the_ensembles_probabilities_are_the_mean_of_its_members(members):
    models, prepared = members
    x = prepared["test"][0]
    each = [model.predict(x, verbose=0) for model in models.values()]
    expected = (each[0] + each[1] + each[2]) / 3
    np.testing.assert_allclose(mean_probabilities(list(models.values()), x), expected, atol=1e-6)
    # The same mean inside the graph, which the gradient attacks differentiate.
    in_graph = MeanOfMembers(list(models.values()))(x).numpy()
    np.testing.assert_allclose(in_graph, expected, atol=1e-6)
    assert np.allclose(in_graph.sum(axis=1), 1.0, atol=1e-5)


def test_every_figure_of_the_ensembles_report_is_what_the_mean_probabilities_score(members):
    models, prepared = members
    x, y = prepared["test"]
    report = EnsembleReport.model_validate(
        evaluate_ensemble(models, (x, y), prepared.class_names, QUICK, seed=7)
    )
    each = {name: model.predict(x, verbose=0) for name, model in models.items()}
    mean = sum(each.values()) / 3
    assert report.members == ["fnn", "cnn", "lstm"]
    assert report.clean.accuracy == pytest.approx(np.mean(mean.argmax(1) == y))
    for name, probabilities in each.items():
        assert report.member_accuracy[name] == pytest.approx(np.mean(probabilities.argmax(1) == y))
    best = max(report.member_accuracy.values())
    check = report.targets["accuracy_vs_best_member"]
    assert check.bound == pytest.approx(best)
    assert check.met == (report.clean.accuracy >= best)
    # The sweep: max_images of the test images, seeded (150 of 360).
    assert report.test_images == len(y) and report.sweep_images == 150
    sweep = np.sort(np.random.default_rng(7).choice(len(y), 150, replace=False))
    xs, ys = x[sweep], y[sweep]

    def ensemble_accuracy(images: np.ndarray) -> float:
        probabilities = sum(model.predict(images, verbose=0) for model in models.values()) / 3
        return float(np.mean(probabilities.argmax(1) == ys))

    assert report.corruptions["shift"]["1"] == pytest.approx(ensemble_accuracy(shift(xs, 1)))
    # No perturbation at radius 0: the white-box curves start at the sweep's clean accuracy.
    assert report.adversarial.pgd["0"] == pytest.approx(ensemble_accuracy(xs))
    assert report.adversarial.robust_accuracy == report.adversarial.pgd["0.1"]
    assert report.adversarial.pgd["0.1"] < report.adversarial.pgd["0"]
    # White-box: the attack follows the averaged probabilities, not one member's.
    white_box = fgsm(MeanOfMembers(list(models.values())), xs, ys, 0.1)
    assert report.adversarial.fgsm["0.1"] == pytest.approx(ensemble_accuracy(white_box))
    # Crafted on the CNN alone, then shown to all three.
    crafted = fgsm(models["cnn"], xs, ys, 0.1)
    transferred = report.transferred_attacks["cnn"]
    assert transferred.fgsm["0.1"] == pytest.approx(ensemble_accuracy(crafted))
    assert transferred.crafted_on == "cnn"


def test_the_evaluate_params_the_ensemble_logs_are_the_ones_dvc_reruns_it_for():
    import yaml

    from pipeline.core.params import EvaluateParams
    from pipeline.stages.ensemble import EVALUATE_KEYS
    from tests.conftest import REPO

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["ensemble"]["params"]
    evaluate = [key.removeprefix("evaluate.") for key in declared if key.startswith("evaluate.")]
    assert sorted(evaluate) == sorted(EVALUATE_KEYS)
    assert set(EVALUATE_KEYS) <= set(EvaluateParams.model_fields)
