"""The evaluate stage's parts on a small real CNN and its real TFLite conversions, adversarial
training, the cross-check against IBM's adversarial-robustness-toolbox, and bad model files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.outputs import EvaluateReport, EvaluateSpeed, LineageMetric
from pipeline.core.params import EvaluateParams, TrainCommon, parse_params
from pipeline.ml.compression import to_tflite
from pipeline.ml.evaluation import (
    evaluate_model,
    explained_indices,
    headline_metrics,
    keras_speed,
)
from pipeline.ml.evaluation_figures import plot_tables, write_figures
from pipeline.ml.explain import deletion_curve, grad_cam_layer, integrated_gradients
from pipeline.ml.inference import TFLiteModel
from pipeline.ml.models import build_classifier
from pipeline.ml.robustness import fgsm, pgd
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic, trainer_for
from tests.conftest import PLAIN, sign_agreement
from tests.test_stages_cli import stage, write_params

COMMON = TrainCommon(epochs=4, batch_size=64, early_stopping_patience=4)
SMALL_CNN = {**PLAIN, "filters": [8, 16], "dense_units": [32]}
QUICK = EvaluateParams(
    epsilons=[0.0, 0.05, 0.1],
    robust_epsilon=0.1,
    pgd_steps=5,
    noise_sigmas=[0.2],
    occlusion_fractions=[0.25],
    shifts=[1],
    rotations=[15.0],
    faithfulness_images=30,
    ig_steps=64,
    smoothgrad_samples=4,
    deletion_steps=8,
    random_orders=2,
    latency_runs=10,
    throughput_batch=8,
)


@pytest.fixture(scope="module")
def digits():
    from pipeline.data.sources import load_digits, scale_pixels
    from tests.conftest import make_prepared

    raw = load_digits()
    return make_prepared(scale_pixels(raw.x, raw.pixel_max), raw.y, seed=42)


def train_cnn(digits, common: TrainCommon = COMMON, batch_norm: bool = True, **adversarial):
    block = {**SMALL_CNN, "batch_norm": batch_norm, "adversarial": adversarial}
    params = parse_params({"train": {"cnn": block}})
    make_deterministic(0)
    model = build_classifier("cnn", params.train, (8, 8, 1), 10)
    trainer = trainer_for(model, params.train.cnn.adversarial)
    compile_classifier(trainer, params.train.cnn.optimizer, common)
    history = fit_classifier(trainer, digits["train"], digits["val"], common, 10, verbose=0)
    return model, history


@pytest.fixture(scope="module")
def cnn(digits):
    return train_cnn(digits)[0]


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


@pytest.fixture(scope="module")
def evaluated(cnn, digits):
    int8 = TFLiteModel(to_tflite(cnn, "int8", digits["train"][0][:50]), kernels="xnnpack")
    variants = {"int8": (int8, cnn, "models/cnn/model.keras")}
    return evaluate_model(cnn, variants, digits["test"], tuple("0123456789"), QUICK, seed=0)


def test_clean_performance_agrees_with_the_model(evaluated, cnn, digits):
    report, _ = evaluated
    x, y = digits["test"]
    clean = report["clean"]
    assert clean["accuracy"] == pytest.approx(accuracy(cnn, x, y))
    matrix = np.array(clean["confusion_matrix"])
    assert matrix.sum() == len(y) and np.trace(matrix) == round(clean["accuracy"] * len(y))
    assert [c["support"] for c in clean["per_class"]] == np.bincount(y, minlength=10).tolist()
    bins = [b for b in clean["reliability"] if b["count"]]
    assert sum(b["count"] for b in bins) == len(y)
    # ECE is the count-weighted gap of the reliability diagram's bars.
    gaps = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / len(y)
    assert clean["ece"] == pytest.approx(gaps)


def test_robustness_curves(evaluated, cnn, digits):
    report, _ = evaluated
    x, y = digits["test"]
    adversarial = report["adversarial"]
    assert adversarial["fgsm"]["0"] == adversarial["pgd"]["0"] == report["clean"]["accuracy"]
    for epsilon in ("0.05", "0.1"):
        assert adversarial["pgd"][epsilon] <= adversarial["fgsm"][epsilon]
    # The headline robust accuracy, recomputed here: PGD at robust_epsilon, the report's seed.
    attacked = pgd(cnn, x, y, QUICK.robust_epsilon, QUICK.pgd_steps, QUICK.pgd_step_size, 0)
    assert adversarial["robust_accuracy"] == pytest.approx(accuracy(cnn, attacked, y))
    assert set(report["corruptions"]) == {"gaussian_noise", "occlusion", "shift", "rotation"}
    variant = report["variants"]["int8"]
    assert variant["kernels"] == "xnnpack"  # XNNPACK prepares this int8 CNN: no fallback
    assert variant["transferred_attacks"]["crafted_on"] == "models/cnn/model.keras"
    # Attacks crafted on the float parent transfer: the int8 model loses accuracy too.
    assert variant["transferred_attacks"]["pgd"]["0.1"] < variant["accuracy"] - 0.05
    assert set(variant["corruptions"]) == set(report["corruptions"])


def test_max_images_bounds_the_sweeps_and_clean_metrics_keep_every_image(cnn, digits):
    x, y = digits["test"]
    budget = QUICK.model_copy(update={"max_images": 100})
    report, _ = evaluate_model(cnn, {}, digits["test"], tuple("0123456789"), budget, seed=3)
    assert report["test_images"] == len(y) == 360 and report["sweep_images"] == 100
    assert report["clean"]["accuracy"] == pytest.approx(accuracy(cnn, x, y))
    # An independent draw of the same 100: a seeded choice without replacement, in order.
    subset = np.sort(np.random.default_rng(3).choice(len(y), 100, replace=False))
    attacked = pgd(cnn, x[subset], y[subset], budget.robust_epsilon, budget.pgd_steps, None, 3)
    robust = report["adversarial"]["robust_accuracy"]
    assert robust == pytest.approx(accuracy(cnn, attacked, y[subset]))
    assert report["adversarial"]["pgd"]["0"] == pytest.approx(accuracy(cnn, x[subset], y[subset]))


def test_explanations_are_complete_and_faithful(evaluated):
    report, grid = evaluated
    explained = report["explanations"]
    assert explained["methods"] == [
        "vanilla_gradients",
        "smoothgrad",
        "integrated_gradients",
        "occlusion",
        "grad_cam",
    ]
    assert len(explained["grid_images"]) == 10 and grid["images"].shape == (10, 8, 8, 1)
    assert all(grid[m].shape == (10, 8, 8) for m in explained["methods"])
    faithful = explained["faithfulness"]
    assert faithful["images"] == 30 and len(faithful["deleted_fraction"]) == 9
    assert faithful["deletion_auc"][faithful["most_faithful"]] < faithful["deletion_auc_random"]
    # Each pixel-level method, not only the best. Grad-CAM's map, upsampled from the last
    # convolution's, does not beat random deletion here (measured 0.150 against 0.142).
    for method in ("vanilla_gradients", "smoothgrad", "occlusion"):
        assert faithful["deletion_auc"][method] < faithful["deletion_auc_random"], method


def test_explanation_numbers_match_an_independent_computation(evaluated, cnn, digits):
    """IG's completeness from the grid's own maps and the model's outputs, and IG's deletion
    area over the same 30 images, computed here rather than read from the report."""
    report, grid = evaluated
    x, y = digits["test"]
    explained = report["explanations"]

    def completeness(images: np.ndarray, labels: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """|sum of attributions - (f(x) - f(black))| / |f(x) - f(black)|, per image."""
        rows = np.arange(len(images)), labels
        gain = cnn(images).numpy()[rows] - cnn(np.zeros_like(images)).numpy()[rows]
        return np.abs(maps.reshape(len(images), -1).sum(axis=1) - gain) / np.abs(gain)

    shown = np.array(explained["grid_images"])
    reported = explained["ig_completeness_error"]
    errors = completeness(x[shown], y[shown], grid["integrated_gradients"])
    np.testing.assert_allclose(reported["grid_images"], errors, rtol=1e-4, atol=1e-6)
    chosen = explained_indices(y, QUICK.explain_per_class, QUICK.faithfulness_images)
    maps, _, steps = integrated_gradients(
        cnn, x[chosen], y[chosen], steps=QUICK.ig_steps, bound=0.05, max_steps=QUICK.ig_max_steps
    )
    assert reported["steps_max"] == steps.max() and reported["steps_mean"] == steps.mean()
    every = completeness(x[chosen], y[chosen], maps)
    assert reported["max"] == pytest.approx(every.max(), rel=1e-4)
    assert reported["mean"] == pytest.approx(every.mean(), rel=1e-4)
    _, area = deletion_curve(cnn, x[chosen], y[chosen], maps, QUICK.deletion_steps)
    faithful = explained["faithfulness"]
    assert faithful["deletion_auc"]["integrated_gradients"] == pytest.approx(area.mean())
    assert faithful["deletion_auc"][faithful["most_faithful"]] <= area.mean()


def test_outputs_for_dvc_plots_figures_and_mlflow(evaluated, cnn, digits, tmp_path: Path):
    report, grid = evaluated
    x, y = digits["test"]
    typed = EvaluateReport.model_validate({"model": "cnn", "model_bytes": 1234, **report})
    tables = plot_tables(typed, y, cnn.predict(x, verbose=0).argmax(1))
    assert tables["confusion.csv"].splitlines()[0] == "actual,predicted"
    assert len(tables["confusion.csv"].splitlines()) == len(y) + 1
    assert tables["adversarial.csv"].splitlines()[0] == "epsilon,fgsm,pgd"
    assert tables["deletion.csv"].splitlines()[0].endswith(",grad_cam,random")
    write_figures(tmp_path, "cnn", typed, dict(grid))
    for name in ("confusion", "reliability", "robustness", "deletion", "attributions"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    speed = keras_speed(cnn, x, QUICK)
    assert speed["latency_ms_batch1"] > 0 and speed["throughput_per_s_large_batch"] > 0
    timed = EvaluateSpeed.model_validate({**speed, "wall_time_s": 1.0, "model_digest": "d"})
    metrics = headline_metrics(typed, timed)
    assert metrics["evaluate.pgd.eps_0.1"] == report["adversarial"]["robust_accuracy"]
    # The names promotion reads back from the lineage runs are among them, with their values.
    assert metrics[LineageMetric.ACCURACY] == report["clean"]["accuracy"]
    assert metrics[LineageMetric.ROBUST_ACCURACY] == report["adversarial"]["robust_accuracy"]
    assert metrics[LineageMetric.LATENCY] == speed["latency_ms_batch1"]
    assert metrics[LineageMetric.SIZE] == 1234.0
    assert metrics["evaluate.int8.transferred_pgd.eps_0.1"] < 1.0
    json.dumps(report)  # the report is plain JSON


def test_explained_images_are_the_first_of_each_class():
    y = np.array([3, 1, 1, 0, 3, 0, 2, 2])
    assert explained_indices(y, 1, 0).tolist() == [3, 1, 6, 0]
    assert explained_indices(y, 1, 6).tolist() == [3, 1, 6, 0, 2, 4]
    assert explained_indices(y, 2, 0).tolist() == [3, 5, 1, 2, 6, 7, 0, 4]


def test_grad_cam_explains_the_last_convolution(cnn):
    assert grad_cam_layer(cnn) == "conv1_act"
    fnn = build_classifier("fnn", parse_params({}).train, (8, 8, 1), 10)
    assert grad_cam_layer(fnn) is None


def test_fgsm_matches_ibm_adversarial_robustness_toolbox(cnn, digits):
    """The independent implementation: ART's FastGradientMethod on the same model and inputs."""
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import TensorFlowV2Classifier
    from tf_keras.losses import SparseCategoricalCrossentropy

    x, y = digits["test"]
    classifier = TensorFlowV2Classifier(
        model=cnn,
        nb_classes=10,
        input_shape=(8, 8, 1),
        loss_object=SparseCategoricalCrossentropy(),
        clip_values=(0.0, 1.0),
    )
    for epsilon in (0.05, 0.1, 0.2):
        theirs = FastGradientMethod(classifier, eps=epsilon).generate(x, y=np.eye(10)[y])
        ours = fgsm(cnn, x, y, epsilon)
        assert abs(accuracy(cnn, ours, y) - accuracy(cnn, theirs, y)) <= 0.01
        assert sign_agreement(ours, theirs, x) >= 0.99  # measured 1.0 at each epsilon here


def test_adversarial_training_makes_the_cnn_more_robust(digits):
    """Same architecture, seed and epochs, with and without PGD examples in training."""
    longer = TrainCommon(epochs=30, batch_size=32, early_stopping_patience=30)
    # Without batch norm: its moving averages lag behind a short run on mixed batches.
    plain, _ = train_cnn(digits, longer, batch_norm=False)
    robust, history = train_cnn(
        digits, longer, batch_norm=False, method="pgd", epsilon=0.1, steps=3
    )
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert robust.name == "cnn"  # the wrapped classifier is what gets saved
    x, y = digits["test"]
    plain_pgd = accuracy(plain, pgd(plain, x, y, 0.1, 10), y)
    robust_pgd = accuracy(robust, pgd(robust, x, y, 0.1, 10), y)
    print(
        f"clean {accuracy(plain, x, y):.3f}/{accuracy(robust, x, y):.3f}, "
        f"PGD@0.1 {plain_pgd:.3f}/{robust_pgd:.3f}, {len(history['loss'])} epochs"
    )
    assert accuracy(robust, x, y) > 0.9
    assert robust_pgd > plain_pgd + 0.1


def test_fgsm_training_runs_and_crafts_inside_the_ball(digits):
    from pipeline.ml.training import AdversarialTraining

    params = parse_params({"train": {"cnn": {**SMALL_CNN, "adversarial": {"method": "fgsm"}}}})
    model = build_classifier("cnn", params.train, (8, 8, 1), 10)
    trainer = trainer_for(model, params.train.cnn.adversarial)
    assert isinstance(trainer, AdversarialTraining)
    compile_classifier(trainer, params.train.cnn.optimizer, COMMON)
    x, y = digits["train"][0][:32], digits["train"][1][:32]
    attacked = trainer.attack(tf.constant(x), tf.constant(y)).numpy()
    assert np.abs(attacked - x).max() <= 0.1 + 1e-6 and attacked.min() >= 0.0
    assert np.abs(attacked - x).max() > 0.09  # one full-epsilon step where the range allows


@pytest.mark.parametrize("fault", ["missing model", "corrupt model", "corrupt tflite"])
def test_a_missing_or_corrupt_model_is_named(tmp_path: Path, cnn, fault):
    write_params(tmp_path)
    assert stage(tmp_path, "ingest").returncode == 0
    folder = tmp_path / "models/cnn"
    folder.mkdir(parents=True)
    compressed = tmp_path / "models/compressed/cnn"
    compressed.mkdir(parents=True)
    if fault == "corrupt model":
        (folder / "model.keras").write_bytes(b"PK\x03\x04 not a keras archive")
        expected = "models/cnn/model.keras: cannot load the model"
    elif fault == "corrupt tflite":
        cnn.save(folder / "model.keras")
        (compressed / "int8.tflite").write_bytes(b"TFL3" + bytes(100))
        expected = "models/compressed/cnn/int8.tflite: not a usable TFLite model"
    else:
        expected = "models/cnn/model.keras: model file not found"
    last_good = tmp_path / "reports/evaluate/cnn.json"
    last_good.parent.mkdir(parents=True)
    last_good.write_text('{"clean": {"accuracy": 0.99}}')
    result = stage(tmp_path, "evaluate", "--model", "cnn")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"evaluate: error: {expected}") and "Traceback" not in result.stderr
    assert last_good.read_text() == '{"clean": {"accuracy": 0.99}}'
    assert not (tmp_path / "reports/evaluate/cnn").exists()
