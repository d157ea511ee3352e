"""Blessing and the model registry: the rules as pure functions, then real MLflow registries in
SQLite stores (runs with real logged tf_keras models)."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.outputs import Check
from pipeline.core.params import BaselineParams, PromoteParams
from pipeline.tools.promote import (
    ACCURACY,
    BASELINE_RULE,
    CHALLENGER,
    CHAMPION,
    LATENCY,
    ROBUST_ACCURACY,
    SIZE,
    Baseline,
    Blessing,
    best_baseline,
    bless,
    promote_family,
    validated,
)

# The rule against the classical baselines has tests of its own below.
RULES = PromoteParams(
    min_accuracy=0.9,
    min_robust_accuracy=0.3,
    max_model_bytes=1000,
    max_latency_ms=5.0,
    beat_baselines=False,
)
GOOD = {ACCURACY: 0.95, ROBUST_ACCURACY: 0.5, SIZE: 500.0, LATENCY: 1.0}


def failed(blessing: Blessing) -> list[str]:
    return [blessing.reasons[name] for name, c in blessing.checks.items() if not c.met]


def test_first_candidate_meeting_every_threshold_is_blessed():
    blessing = bless(GOOD, None, RULES)
    assert blessing.blessed and len(blessing.checks) == 4 and not failed(blessing)
    assert blessing.checks["accuracy"] == Check(value=0.95, bound=0.9, met=True)


@pytest.mark.parametrize(
    ("metric", "value", "reason"),
    [
        (ACCURACY, 0.85, "accuracy 0.85 fails >= 0.9"),
        (ROBUST_ACCURACY, 0.2, "robust_accuracy 0.2 fails >= 0.3"),
        (SIZE, 2000.0, "model_bytes 2000 fails <= 1000"),
        (LATENCY, 9.5, "latency_ms 9.5 fails <= 5"),
    ],
)
def test_each_absolute_threshold_can_refuse(metric, value, reason):
    blessing = bless({**GOOD, metric: value}, None, RULES)
    assert not blessing.blessed and failed(blessing) == [reason]


def test_worse_than_the_champion_beyond_the_tolerance_is_refused():
    champion = {**GOOD, ACCURACY: 0.97}
    blessing = bless({**GOOD, ACCURACY: 0.96}, champion, RULES)  # tolerance 0.005
    assert not blessing.blessed
    assert failed(blessing) == ["accuracy_vs_champion 0.96 fails >= 0.965"]
    assert bless({**GOOD, ACCURACY: 0.966}, champion, RULES).blessed  # within the tolerance


def test_a_metric_that_was_never_measured_refuses():
    candidate = {k: v for k, v in GOOD.items() if k != ROBUST_ACCURACY}
    blessing = bless(candidate, None, RULES)
    assert not blessing.blessed and "robust_accuracy: not measured" in failed(blessing)[0]
    assert blessing.checks["robust_accuracy"] == Check(value=None, bound=0.3, met=False)


def test_only_validated_data_counts():
    assert validated({"success": True, "content_hash": "abc"}, "abc") == []
    assert "failed validation" in validated({"success": False, "content_hash": "abc"}, "abc")[0]
    assert "not the validated data" in validated({"success": True, "content_hash": "x"}, "abc")[0]


SEEDS = itertools.count()  # each candidate its own weights (its own digest), reproducibly


def candidate(
    tmp_path: Path,
    family: str,
    accuracy: float,
    data_hash: str = "h",
    robust: float = 0.5,
    log_served: Callable[[str, Path, np.ndarray], object] | None = None,
) -> str:
    """A lineage run as the stages leave it: the train stage's logged classifier and the model
    file's digest, evaluate's metrics, and a compress child run with the int8 TFLite file; and
    the prepared test images that promote's canary batch reads. `log_served` logs another
    model in place of the classifier."""
    import tf_keras as keras

    from pipeline.core import tracking
    from pipeline.core.layout import compressed_dir
    from pipeline.core.outputs import ModelInputs
    from pipeline.ml.artifacts import save_keras
    from pipeline.ml.compression import to_tflite

    test_split = tmp_path / "data" / "prepared" / "test.npz"
    images = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    if not test_split.is_file():
        test_split.parent.mkdir(parents=True)
        np.savez(test_split, x=images, y=np.arange(20) % 10)
    keras.utils.set_random_seed(next(SEEDS))
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    folder = tmp_path / "models" / family
    folder.mkdir(parents=True, exist_ok=True)
    save_keras(model, folder / "model.keras")
    names = [str(c) for c in range(10)]
    ModelInputs(image_shape=(8, 8, 1), image_size=None, class_names=names, source="digits").write(
        folder / "inputs.json"
    )
    int8 = tmp_path / compressed_dir(family) / "int8.tflite"
    int8.parent.mkdir(parents=True, exist_ok=True)
    int8.write_bytes(to_tflite(model, "int8", images))
    with tracking.lineage_run("digits", family, {"data_hash": data_hash}) as run_id:
        if log_served is None:
            tracking.log_classifier(
                run_id, folder / "model.keras", folder / "inputs.json", images[:2]
            )
        else:
            log_served(run_id, folder, images[:2])
        tracking.log_metrics(run_id, {**GOOD, ACCURACY: accuracy, ROBUST_ACCURACY: robust})
        tracking.record_model(run_id, folder / "model.keras")
    with tracking.stage_run(run_id, "compress", {"model_family": family}) as child:
        tracking.log_artifacts(child, [int8.parent], "compress")
    return run_id


def test_registry_keeps_the_champion_against_a_worse_candidate(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    validation = {"success": True, "content_hash": "h"}

    first = candidate(tmp_path, "cnn", 0.95)
    decision = promote_family("cnn", "digits", RULES, validation)
    assert decision.decision == CHAMPION and decision.version == "1"
    assert any("no champion yet" in r for r in decision.reasons)
    assert client.get_model_version_by_alias("digits-cnn", CHAMPION).run_id == first

    worse = candidate(tmp_path, "cnn", 0.93)
    decision = promote_family("cnn", "digits", RULES, validation)
    assert decision.decision == CHALLENGER and decision.version == "2"
    assert decision.reasons == ["accuracy_vs_champion 0.93 fails >= 0.945"]
    assert decision.checks["accuracy_vs_champion"].met is False
    assert client.get_model_version_by_alias("digits-cnn", CHAMPION).run_id == first
    assert client.get_model_version_by_alias("digits-cnn", CHALLENGER).run_id == worse
    assert client.get_run(worse).data.tags["promotion.decision"] == CHALLENGER

    better = candidate(tmp_path, "cnn", 0.97)
    assert promote_family("cnn", "digits", RULES, validation).decision == CHAMPION
    assert client.get_model_version_by_alias("digits-cnn", CHAMPION).run_id == better
    again = promote_family("cnn", "digits", RULES, validation)
    assert again.version == "3" and again.reasons == ["already the champion: nothing to compare"]
    assert len(client.search_model_versions("name = 'digits-cnn'")) == 3


def test_unvalidated_data_registers_nothing(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    candidate(tmp_path, "fnn", 0.99, data_hash="other")
    decision = promote_family("fnn", "digits", RULES, {"success": True, "content_hash": "h"})
    assert decision.decision == "rejected" and decision.version is None
    assert MlflowClient(uri).search_registered_models() == []


def test_a_drop_below_the_champions_robust_accuracy_is_refused():
    champion = {**GOOD, ROBUST_ACCURACY: 0.6}
    blessing = bless({**GOOD, ROBUST_ACCURACY: 0.59}, champion, RULES)  # tolerance 0.005
    assert not blessing.blessed
    assert failed(blessing) == ["robust_accuracy_vs_champion 0.59 fails >= 0.595"]
    made = blessing.checks["robust_accuracy_vs_champion"]
    assert (made.value, made.bound, made.met) == (0.59, pytest.approx(0.595), False)
    assert bless({**GOOD, ROBUST_ACCURACY: 0.596}, champion, RULES).blessed


def test_each_version_carries_its_decision_as_a_tag(tmp_path, monkeypatch):
    """The registry's own record: version 1 blessed, version 2 (more accurate, less robust than
    the champion) registered as the challenger, each tagged with its decision."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    validation = {"success": True, "content_hash": "h"}
    candidate(tmp_path, "fnn", 0.95, robust=0.6)
    assert promote_family("fnn", "digits", RULES, validation).decision == CHAMPION
    candidate(tmp_path, "fnn", 0.99, robust=0.5)
    decision = promote_family("fnn", "digits", RULES, validation)
    assert decision.decision == CHALLENGER
    assert decision.reasons == ["robust_accuracy_vs_champion 0.5 fails >= 0.595"]
    client = MlflowClient(uri)
    tags = {
        str(v.version): v.tags["decision"]
        for v in client.search_model_versions("name = 'digits-fnn'")
    }
    assert tags == {"1": CHAMPION, "2": CHALLENGER}


def test_the_model_card_becomes_the_versions_description_cut_at_the_registrys_limit(
    tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from pipeline.core.io import file_digest
    from pipeline.core.tracking import DESCRIPTION_LIMIT

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = candidate(tmp_path, "cnn", 0.95)
    digest = file_digest(tmp_path / "models/cnn/model.keras")
    card = tmp_path / "reports/model_cards/cnn.md"
    card.parent.mkdir(parents=True)
    lines = [f"- model file sha256 `{digest}`", *(f"- measured line {i}" for i in range(600))]
    card.write_text("# Model card: cnn on digits\n" + "\n".join(lines) + "\n")
    decision = promote_family("cnn", "digits", RULES, {"success": True, "content_hash": "h"})
    assert decision.version is not None
    description = MlflowClient(uri).get_model_version("digits-cnn", decision.version).description
    assert description is not None
    kept, tail = description.rsplit("\n\n", 1)
    assert tail == "… (cut at MLflow's 5000 characters: the whole is reports/model_cards/cnn.md)"
    assert card.read_text().startswith(kept + "\n")  # whole lines, from the start
    longest = max(len(line) for line in lines) + 1
    assert DESCRIPTION_LIMIT - longest < len(description) <= DESCRIPTION_LIMIT
    artifacts = [a.path for a in MlflowClient(uri).list_artifacts(run_id, "model_card")]
    assert artifacts == ["model_card/cnn.md"]


def test_a_card_of_another_model_is_not_set_as_the_description(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = candidate(tmp_path, "cnn", 0.95)
    card = tmp_path / "reports/model_cards/cnn.md"
    card.parent.mkdir(parents=True)
    card.write_text(f"# Model card: cnn on digits\n- model file sha256 `{'0' * 64}`\n")
    decision = promote_family("cnn", "digits", RULES, {"success": True, "content_hash": "h"})
    assert decision.version is not None
    version = MlflowClient(uri).get_model_version("digits-cnn", decision.version)
    assert not version.description
    assert MlflowClient(uri).list_artifacts(run_id, "model_card") == []
    assert "reports/model_cards/cnn.md describes another model" in capsys.readouterr().out


def test_a_blessed_candidate_is_infra_validated_in_a_fresh_process_before_it_is_champion(
    tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_PLANTED", "inherited")  # what the fresh process must not see
    run_id = candidate(tmp_path, "cnn", 0.95)
    decision = promote_family("cnn", "digits", RULES, {"success": True, "content_hash": "h"})
    infra = decision.infra_validation
    assert decision.decision == CHAMPION and infra is not None and infra.passed
    assert infra.model_uri == "models:/digits-cnn/1" and infra.canary_images == 20
    assert infra.served_max_difference is not None and infra.served_max_difference <= 1e-4
    assert infra.int8_agreement is not None and infra.int8_agreement >= 0.95
    assert infra.tflite_artifact is not None
    compress_run = infra.tflite_artifact.split("/")[1]
    assert MlflowClient(uri).get_run(compress_run).data.tags["mlflow.parentRunId"] == run_id
    assert infra.seconds["fresh_process"] >= infra.seconds["served_load_predict"] > 0
    assert "PATH" in infra.environment and "PIPELINE_PLANTED" not in infra.environment
    assert "MLFLOW_TRACKING_URI" not in infra.environment  # the store comes as an argument
    assert MlflowClient(uri).get_model_version("digits-cnn", "1").tags["infra_validation"] == "True"


def test_a_model_its_logged_environment_cannot_load_is_registered_only_as_challenger(
    tmp_path, monkeypatch
):
    """The served model's class lives in a module only this process can import: the metrics
    bless it, the fresh process cannot load it, so it never becomes champion."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    here_only = tmp_path / "here_only"
    here_only.mkdir()
    (here_only / "planted_model.py").write_text(
        textwrap.dedent(
            """
            import mlflow.pyfunc

            class Unshipped(mlflow.pyfunc.PythonModel):
                def predict(self, context, model_input, params=None):
                    return model_input
            """
        )
    )
    monkeypatch.syspath_prepend(str(here_only))
    import planted_model  # type: ignore[import-not-found]  # written above, at run time

    def log_unshipped(run_id: str, folder: Path, example: np.ndarray) -> object:
        return mlflow.pyfunc.log_model(
            name="model", python_model=planted_model.Unshipped(), pip_requirements=[]
        )

    candidate(tmp_path, "fnn", 0.99, log_served=log_unshipped)
    decision = promote_family("fnn", "digits", RULES, {"success": True, "content_hash": "h"})
    infra = decision.infra_validation
    assert decision.decision == CHALLENGER and decision.version == "1"
    assert all(check.met for check in decision.checks.values())  # only the loading refused it
    assert infra is not None and not infra.passed and infra.served_max_difference is None
    assert infra.int8_agreement is not None  # the TFLite file still loaded and answered
    assert infra.reasons == [
        "the registered model did not load or answer: "
        "ModuleNotFoundError: No module named 'planted_model'"
    ]
    assert infra.reasons[0] in decision.reasons
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("digits-fnn", CHALLENGER).version) == "1"
    assert client.get_model_version("digits-fnn", "1").tags["infra_validation"] == "False"
    with pytest.raises(Exception, match="alias champion not found|not found"):
        client.get_model_version_by_alias("digits-fnn", CHAMPION)


def test_the_canary_judge_refuses_a_served_model_or_int8_file_that_answers_differently():
    from pipeline.ml.infra_validation import judge

    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    same = {"served_probabilities": reference.tolist(), "tflite_labels": [0, 1, 0, 1]}
    difference, agreement, failures = judge(reference, same, RULES)
    assert (difference, agreement, failures) == (0.0, 1.0, [])
    drifted = {**same, "served_probabilities": (reference + 0.01).tolist()}
    assert judge(reference, drifted, RULES)[2] == [
        "served probabilities differ from the Keras model's by up to 0.01 (> 0.0001)"
    ]
    flipped = {**same, "tflite_labels": [0, 1, 1, 1]}  # 3 of 4 agree, below 0.95
    assert judge(reference, flipped, RULES)[1:] == (
        0.75,
        ["int8 labels agree with the Keras model's on 0.750 of the canary images (< 0.95)"],
    )
    missing = {**same, "tflite_labels": None}
    assert judge(reference, missing, RULES)[2] == [
        "no int8 TFLite file in the lineage (run the compress stage)"
    ]
    crashed = {"error": "exited 1: Segmentation fault"}
    assert judge(reference, crashed, RULES) == (
        None,
        None,
        ["the fresh process failed: exited 1: Segmentation fault"],
    )


def test_a_family_behind_the_best_baseline_is_refused_with_the_baselines_name():
    rules = RULES.model_copy(update={"beat_baselines": True})
    behind = bless({**GOOD, ACCURACY: 0.9917}, None, rules, Baseline("svc", 0.9944))
    assert not behind.blessed
    assert failed(behind) == [
        "accuracy_vs_best_baseline 0.9917 fails >= 0.9944 (the svc baseline's test accuracy)"
    ]
    ahead = bless({**GOOD, ACCURACY: 0.9972}, None, rules, Baseline("svc", 0.9944))
    assert ahead.blessed and ahead.checks[BASELINE_RULE] == Check(
        value=0.9972, bound=0.9944, met=True
    )
    assert "meets >= 0.9944 (the svc baseline" in ahead.reasons[BASELINE_RULE]
    unmeasured = bless(GOOD, None, rules, None)
    assert not unmeasured.blessed and BASELINE_RULE not in unmeasured.checks  # no bound to show
    assert unmeasured.reasons[BASELINE_RULE] == (
        "accuracy_vs_best_baseline: no baseline measured in reports/baseline "
        "(run the baseline stage)"
    )
    assert bless(GOOD, None, RULES, None).blessed  # beat_baselines: false turns the rule off


def test_the_best_baseline_is_read_from_the_baseline_stages_reports(tmp_path, monkeypatch):
    from pipeline.core.layout import baseline_report
    from pipeline.core.params import DataParams, EvaluateParams
    from pipeline.data.prepared import prepare
    from pipeline.ml.baselines import fit_baseline, measure_baseline

    monkeypatch.chdir(tmp_path)
    assert best_baseline() is None
    digits = prepare(DataParams(), seed=42)
    grid = BaselineParams.model_validate({"svc": {"C": [10.0]}, "boosting": {"max_iter": 10}})
    measured = {}
    for name in ("svc", "boosting"):
        model, chosen, points = fit_baseline(name, digits.splits, grid, seed=42)
        report = measure_baseline(
            name,
            model,
            chosen,
            points,
            digits.splits,
            digits.class_names,
            EvaluateParams(max_images=50),
            seed=42,
        )
        report.write(baseline_report(name))
        measured[name] = report.test_accuracy
    assert measured["svc"] > measured["boosting"]
    assert best_baseline() == Baseline("svc", measured["svc"])
