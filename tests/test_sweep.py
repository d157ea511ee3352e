"""The best point of a sweep, read from a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipeline.tools.sweep import SweepRun, best, main, varying


def log_run(name: str, tags: dict[str, str], params: dict[str, str], accuracy: float) -> None:
    with mlflow.start_run(run_name=name, tags=tags):
        mlflow.log_params(params)
        mlflow.log_metric("test_accuracy", accuracy)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data: {source: digits}\n")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("digits")
    grid = {("0.1", "2"): 0.91, ("0.1", "3"): 0.95, ("0.3", "2"): 0.89, ("0.3", "3"): 0.93}
    for (dropout, epochs), accuracy in grid.items():
        tags = {"sweep": "grid", "model_family": "fnn", "dvc_experiment": f"exp-{dropout}-{epochs}"}
        params = {"model.dropout": dropout, "train.epochs": epochs, "seed": "42"}
        log_run("fnn", tags, params, accuracy)
    # Another sweep and an untagged run: never part of the answer.
    log_run("fnn", {"sweep": "other", "model_family": "fnn"}, {"model.dropout": "0.5"}, 0.99)
    log_run("fnn", {"model_family": "fnn"}, {"model.dropout": "0.7"}, 0.99)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it; typed str | Path
    return tmp_path


def test_best_point_by_highest_and_lowest(store: Path, capsys):
    main(["grid", "--metric", "test_accuracy", "--model", "fnn"])
    out = capsys.readouterr().out.splitlines()
    header = ["experiment", "model", "model.dropout", "train.epochs", "test_accuracy"]
    assert out[0].split() == header
    assert len(out) == 1 + 4 + 1
    assert out[-1].startswith(
        "best by test_accuracy: exp-0.1-3 (fnn; model.dropout=0.1, train.epochs=3) "
        "test_accuracy=0.9500"
    )
    main(["grid", "--lowest"])
    assert "best by test_accuracy: exp-0.3-2 " in capsys.readouterr().out


def test_unknown_sweep_or_metric_is_one_clear_error(store: Path):
    from pipeline.core.cli import PipelineError

    with pytest.raises(PipelineError, match="no lineage run tagged sweep 'nope'"):
        main(["nope"])
    with pytest.raises(PipelineError, match="no run of the sweep has the metric 'f1'"):
        main(["grid", "--metric", "f1"])


def test_axes_are_the_params_that_vary():
    runs = [
        SweepRun(params={"a": "1", "b": "x", "only_here": "1"}, metrics={"m": 1.0}),
        SweepRun(params={"a": "2", "b": "x"}, metrics={"m": 0.5}),
    ]
    assert varying(runs) == ["a"]
    assert best(runs, "m").params["a"] == "1"
    assert best(runs, "m", lowest=True).params["a"] == "2"
