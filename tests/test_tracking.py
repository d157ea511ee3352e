"""The tracking module against a real MLflow SQLite store in a temporary folder."""

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core import tracking
from pipeline.core.cli import PipelineError


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def test_project_root_of_a_queued_dvc_experiment_is_the_main_repository(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (workspace / "pipeline").mkdir(parents=True)
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.project_root(workspace) == tmp_path
    assert tracking.project_root(tmp_path / "pipeline") == tmp_path


def test_default_store_is_sqlite_at_the_root_by_absolute_path(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_redact_hides_credentials():
    assert (
        tracking.redact("postgresql://bob:s3cret@db:5432/mlflow")
        == "postgresql://***@db:5432/mlflow"
    )
    assert tracking.redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_lineage_run_records_batches_and_finishes(store: str):
    with tracking.lineage_run("digits", "cnn", {"model_family": "cnn"}) as run_id:
        tracking.log_params(run_id, {f"p{i}": i for i in range(150)})  # more than one batch
        tracking.log_series(run_id, {"epoch/loss": [(s, 1.0 / s) for s in range(1, 1201)]})
        tracking.log_metrics(run_id, {"test_accuracy": 0.5})
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(run.data.params) == 150
    assert run.data.metrics["test_accuracy"] == 0.5
    assert len(client.get_metric_history(run_id, "epoch/loss")) == 1200
    assert run.data.tags["model_family"] == "cnn"
    assert {
        "git_commit",
        "git_dirty",
        "version.tensorflow",
        "version.mlflow",
    } <= run.data.tags.keys()
    assert client.get_experiment(run.info.experiment_id).name == "digits"


def test_a_failing_stage_leaves_its_run_failed(store: str):
    with pytest.raises(RuntimeError), tracking.lineage_run("digits", "fnn", {}) as run_id:
        raise RuntimeError("boom")
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"


def test_mlflow_project_run_id_is_recorded_not_resumed(store: str, monkeypatch):
    mlflow.set_tracking_uri(store)
    parent = MlflowClient(store).create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    with tracking.lineage_run("digits", "lstm", {}) as run_id:
        pass
    assert run_id != parent
    assert MlflowClient(store).get_run(run_id).data.tags["mlflow_project_run_id"] == parent


def test_a_model_files_lineage_is_the_first_finished_run_that_produced_its_bytes(
    store: str, tmp_path: Path
):
    import hashlib

    model = tmp_path / "model.keras"
    model.write_bytes(b"the weights of one training")
    with tracking.lineage_run("digits", "fnn", {}) as failed:
        pass
    MlflowClient(store).set_terminated(failed, "FAILED")  # tagged, but not a finished run
    MlflowClient(store).set_tag(
        failed, tracking.DIGEST_TAG, hashlib.sha256(model.read_bytes()).hexdigest()
    )
    with tracking.lineage_run("digits", "fnn", {}) as first:
        assert tracking.record_model(first, model) is None  # a failed run is not a lineage
    with tracking.lineage_run("digits", "fnn", {}) as again:  # a retraining, the same bytes
        assert tracking.record_model(again, model) == first
    assert tracking.lineage_of("digits", model) == first
    tags = MlflowClient(store).get_run(again).data.tags
    assert tags[tracking.REPRODUCES_TAG] == first
    assert tags[tracking.DIGEST_TAG] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert tracking.REPRODUCES_TAG not in MlflowClient(store).get_run(first).data.tags
    model.write_bytes(b"the weights of another training")
    with tracking.lineage_run("digits", "fnn", {}) as other:
        assert tracking.record_model(other, model) is None
    assert tracking.lineage_of("digits", model) == other


def test_each_dvc_experiment_keeps_its_own_lineage_of_the_same_bytes(
    store: str, tmp_path: Path, monkeypatch
):
    """Points of a sweep can train the same bytes: each point's later stages log to its own
    run, and the workspace's stay on the workspace's."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights every point trains alike")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with tracking.lineage_run("digits", "cnn", {}) as workspace:
        assert tracking.record_model(workspace, model) is None
    points = {}
    for name in ("point-a", "point-b"):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        with tracking.lineage_run("digits", "cnn", {}) as run_id:
            assert tracking.record_model(run_id, model) is None  # not the workspace's reproduction
        points[name] = run_id
    monkeypatch.setenv("DVC_EXP_NAME", "point-a")
    assert tracking.lineage_of("digits", model) == points["point-a"]
    with tracking.lineage_run("digits", "cnn", {}) as rerun:  # the same point, trained again
        assert tracking.record_model(rerun, model) == points["point-a"]
    monkeypatch.setenv("DVC_EXP_NAME", "point-b")
    assert tracking.lineage_of("digits", model) == points["point-b"]
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.lineage_of("digits", model) == workspace
    # A point applied to the workspace (`dvc exp apply`) has no workspace run: its own is found.
    model.write_bytes(b"weights only point-c trained")
    monkeypatch.setenv("DVC_EXP_NAME", "point-c")
    with tracking.lineage_run("digits", "cnn", {}) as applied:
        tracking.record_model(applied, model)
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.lineage_of("digits", model) == applied


def test_a_model_without_a_lineage_run_is_one_line_naming_the_file(store: str, tmp_path: Path):
    model = tmp_path / "model.keras"
    with pytest.raises(PipelineError, match=r"model.keras: missing; run the stage"):
        tracking.lineage_of("digits", model)
    model.write_bytes(b"weights no run produced")
    with tracking.lineage_run("digits", "fnn", {}):  # the experiment exists, the run does not
        pass
    with tracking.lineage_run("mnist", "fnn", {}) as elsewhere:  # the params named another
        tracking.record_model(elsewhere, model)
    assert tracking.lineage_of("digits", model) == elsewhere
    model.write_bytes(b"weights no run produced at all")
    for experiment in ("digits", "no-such-experiment"):
        with pytest.raises(PipelineError) as info:
            tracking.lineage_of(experiment, model)
        message = str(info.value)
        assert message.startswith(f"{model}: no MLflow run in experiment '{experiment}' of ")
        assert "\n" not in message and "dvc repro --force --downstream" in message


def test_each_split_is_a_dataset_input_of_the_run_named_by_its_content(store: str):
    manifest = {
        "source": "digits",
        "content_hash": "ab" * 32,
        "image_shape": [8, 8, 1],
        "splits": {
            split: {"count": n, "class_counts": {"0": n // 2, "1": n - n // 2}}
            for split, n in (("train", 70), ("val", 10), ("test", 20))
        },
    }
    with tracking.lineage_run("digits", "fnn", {}) as run_id:
        data = {"source": "digits", "path": None, "class_names": ["zero", "one"]}
        tracking.log_datasets(run_id, manifest, data)
    inputs = MlflowClient(store).get_run(run_id).inputs
    assert inputs is not None
    by_context = {i.tags[0].value: i.dataset for i in inputs.dataset_inputs}
    assert set(by_context) == {"training", "validation", "testing"}
    train = by_context["training"]
    assert (train.name, train.digest, train.source_type) == ("digits-train", "ab" * 18, "dvc")
    assert json.loads(train.source) == {
        "path": "data/prepared/train.npz",
        "data": {"source": "digits", "path": None},
    }
    profile = by_context["testing"].profile
    assert profile is not None
    assert json.loads(profile) == {
        "num_rows": 20,
        "class_counts": {"0": 10, "1": 10},
    }


def test_unreachable_store_fails_at_start_in_one_line(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@127.0.0.1:9")  # discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    started = False
    with pytest.raises(PipelineError) as info, tracking.lineage_run("digits", "cnn", {}):
        started = True
    assert not started
    message = str(info.value)
    assert message.startswith("MLflow tracking store http://***@127.0.0.1:9 unavailable")
    assert "\n" not in message and "pw" not in message


def test_logged_folders_keep_their_name(store: str, tmp_path: Path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "a.png").write_bytes(b"png")
    (tmp_path / "losses.csv").write_text("epoch\n")
    with tracking.lineage_run("digits", "gan", {}) as run_id:
        tracking.log_artifacts(run_id, [samples, tmp_path / "losses.csv"], "gan")
    client = MlflowClient(store)
    assert {a.path for a in client.list_artifacts(run_id, "gan")} == {
        "gan/samples",
        "gan/losses.csv",
    }
    assert [a.path for a in client.list_artifacts(run_id, "gan/samples")] == ["gan/samples/a.png"]


def test_a_keras_model_is_logged_and_served_back_without_keras_progress_on_the_console(
    store: str, capfd
):
    """MLflow checks the input example by predicting with the logged model, whose Keras
    `predict` would print a `1/1 [====]` bar into a stage's output; Keras's own lines (the
    console's `--verbose` mode) must still print afterwards."""
    import numpy as np
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2)])
    example = np.arange(6, dtype=np.float32).reshape(2, 3)
    with tracking.lineage_run("digits", "gan", {}) as run_id:
        uri = tracking.log_keras_model(run_id, model, example)
    logged = capfd.readouterr()
    assert "1/1" not in logged.out + logged.err, logged.out
    served = mlflow.pyfunc.load_model(uri).predict(example)
    np.testing.assert_allclose(np.asarray(served), model(example).numpy(), rtol=1e-6)
    capfd.readouterr()
    model.predict(example)  # Keras's default: the progress bar
    assert "1/1" in capfd.readouterr().out


def test_the_logged_model_names_the_tensorflow_wheel_that_is_installed():
    from importlib.metadata import version

    assert tracking.tensorflow_requirement() == f"tensorflow-cpu=={version('tensorflow-cpu')}"


@pytest.mark.parametrize("wheel", ["tensorflow", "tensorflow-cpu"])
def test_the_tensorflow_requirement_is_found_with_either_wheel(monkeypatch, wheel: str):
    """After the README's GPU instructions only `tensorflow` is installed, not `tensorflow-cpu`:
    the lookup must find whichever distribution is there."""
    from importlib.metadata import PackageNotFoundError

    def installed(name: str) -> str:
        if name != wheel:
            raise PackageNotFoundError(name)
        return "2.21.0"

    monkeypatch.setattr(tracking, "version", installed)
    assert tracking.tensorflow_requirement() == f"{wheel}==2.21.0"


def test_no_tensorflow_distribution_is_one_line(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(tracking, "version", missing)
    with pytest.raises(PipelineError, match="TensorFlow is not installed"):
        tracking.tensorflow_requirement()


def test_the_class_names_tag_stays_valid_json_within_mlflows_limit():
    from pipeline.core.tracking import names_tag

    few = [str(digit) for digit in range(10)]
    assert json.loads(names_tag(few)) == few
    many = [f"species number {i} of the survey" for i in range(1000)]
    tag = names_tag(many)
    shown = json.loads(tag)
    assert len(tag) <= 6000 and shown[-1] == "… (1000 in all)"
    assert shown[:-1] == many[: len(shown) - 1] and len(shown) > 10
