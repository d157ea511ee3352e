"""Blessing and the model registry: the rules as pure functions, then real MLflow registries in
SQLite stores (runs with real logged tf_keras models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.outputs import Check
from pipeline.core.params import PromoteParams
from pipeline.tools.promote import (
    ACCURACY,
    CHALLENGER,
    CHAMPION,
    LATENCY,
    ROBUST_ACCURACY,
    SIZE,
    Blessing,
    bless,
    promote_family,
    validated,
)

RULES = PromoteParams(
    min_accuracy=0.9, min_robust_accuracy=0.3, max_model_bytes=1000, max_latency_ms=5.0
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


def candidate(
    tmp_path: Path, family: str, accuracy: float, data_hash: str = "h", robust: float = 0.5
) -> str:
    """A lineage run as the stages leave it: a logged model, evaluate metrics, and its tag of
    the model file's digest."""
    import tf_keras as keras

    from pipeline.core import tracking
    from pipeline.ml.artifacts import save_keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    folder = tmp_path / "models" / family
    folder.mkdir(parents=True, exist_ok=True)
    save_keras(model, folder / "model.keras")
    with tracking.lineage_run("digits", family, {"data_hash": data_hash}) as run_id:
        tracking.log_keras_model(run_id, model, np.zeros((2, 8, 8, 1), np.float32))
        tracking.log_metrics(run_id, {**GOOD, ACCURACY: accuracy, ROBUST_ACCURACY: robust})
        tracking.record_model(run_id, folder / "model.keras")
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
    description = MlflowClient(uri).get_model_version("digits-cnn", decision.version).description
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
    version = MlflowClient(uri).get_model_version("digits-cnn", decision.version)
    assert not version.description
    assert MlflowClient(uri).list_artifacts(run_id, "model_card") == []
    assert "reports/model_cards/cnn.md describes another model" in capsys.readouterr().out
