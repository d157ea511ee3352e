"""Each stage's time split, and MLflow logging that batches instead of calling once per value."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.timing import PHASES, StageTimer


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.6); import pipeline.core.timing as t; print(t.process_age())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    age = float(out.stdout)
    assert 0.6 <= age < 30, age


def test_phases_accumulate_and_the_split_adds_up(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timer = StageTimer("train@cnn")
    with timer.phase("compute"):
        time.sleep(0.2)
    with timer.phase("compute"):
        time.sleep(0.1)
    with timer.phase("logging"):
        time.sleep(0.05)
    time.sleep(0.05)  # claimed by no phase: "other"
    logged: list[dict[str, float]] = []
    figures = timer.finish(logged.append)
    seconds = figures["seconds"]
    assert set(seconds) == {*PHASES, "other"}
    assert 0.3 <= seconds["compute"] < 1.0
    assert 0.05 <= seconds["logging"] < 0.5
    assert seconds["other"] >= 0.05
    assert sum(seconds.values()) == pytest.approx(figures["total_s"], abs=0.01)
    assert figures["compute_fraction"] == pytest.approx(
        seconds["compute"] / figures["total_s"], abs=1e-3
    )
    # The measured file and the metrics MLflow gets hold the same figures.
    assert json.loads((tmp_path / "reports/measured/timing/train_cnn.json").read_text()) == figures
    assert logged == [
        {
            **{f"timing.train.{k}_s": v for k, v in seconds.items()},
            "timing.train.total_s": figures["total_s"],
        }
    ]


def test_an_unknown_phase_is_refused():
    with (
        pytest.raises(ValueError, match="unknown timing phase 'training'"),
        StageTimer("x").phase("training"),
    ):
        pass


@pytest.mark.parametrize("stage", ["ingest", "validate", "report"])
def test_stages_that_need_no_tensorflow_do_not_import_it(stage: str):
    """The stage module and everything its main() imports on the way (checked end to end by the
    timing files of a real `dvc repro` in the slow tests)."""
    code = (
        f"import sys, pipeline.stages.{stage} as m; "
        "import pipeline.data.sources, pipeline.data.prepared, pipeline.core.params; "
        "print(sorted(k for k in ('tensorflow', 'tf_keras', 'mlflow') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_metric_series_go_to_mlflow_in_batches(tmp_path: Path, monkeypatch):
    """Real SQLite store; the client's log_batch is wrapped only to count the calls."""
    from mlflow.tracking import MlflowClient

    from pipeline.core import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    calls: list[int] = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(len(metrics) + len(params) + len(tags))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("batching")).info.run_id
    series = {f"epoch/m{i}": [(step, step / 10) for step in range(1, 81)] for i in range(5)}
    tracking.log_series(run_id, series)  # 400 values
    tracking.log_params(run_id, {f"p{i}": i for i in range(150)})
    tracking.set_tags(run_id, {f"t{i}": i for i in range(30)})
    assert calls == [400, 100, 50, 30]
    assert len(client.get_metric_history(run_id, "epoch/m3")) == 80
    assert client.get_run(run_id).data.tags["t29"] == "29"


def test_importing_the_package_stays_cheap():
    """`import pipeline` marks the first line of every stage: it must not pull in NumPy, let
    alone TensorFlow, or start-up would be counted as imports."""
    code = "import sys, pipeline; print([k for k in ('numpy', 'tensorflow') if k in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_stage_dvc_found_up_to_date_in_a_fresh_clone_reads_as_cached_with_its_headline(
    tmp_path: Path, monkeypatch
):
    """A fresh clone's repro skips a stage whose outputs came with the commit: it wrote no
    timing file here, yet it was cached in that repro and its outputs are what it reports."""
    from pipeline.core.repro_summary import stage_run, status

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "reports/validation/results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"success": True}))
    skipped = stage_run("validate", since=time.time())
    assert (status(skipped), skipped.seconds) == ("cached", None)
    assert skipped.headline == "every expectation met"
    assert status(stage_run("validate", since=None)) == "never ran"


def test_a_stage_knows_when_the_dvc_process_running_it_started_and_none_outside_one(
    tmp_path: Path,
):
    """The report stage dates its repro by the nearest process named dvc above it: a script of
    that name, started here, is found through the shell it runs, and this test process, under no
    such process, gets None."""
    from pipeline.core.repro_summary import repro_started

    assert repro_started() is None
    fake_dvc = tmp_path / "dvc"
    code = "from pipeline.core.repro_summary import repro_started; print(repro_started())"
    fake_dvc.write_text(f"#!/bin/sh\nsleep 0.5\n'{sys.executable}' -c '{code}'\n")
    fake_dvc.chmod(0o755)
    before = time.time()
    script = subprocess.Popen([fake_dvc], stdout=subprocess.PIPE, text=True)
    after = time.time()
    printed, _ = script.communicate(timeout=60)
    assert script.returncode == 0
    # To the clock tick (10 ms); this process started long before, the script's python after.
    assert before - 0.02 <= float(printed) <= after + 0.02


def test_a_summary_that_cannot_be_drawn_leaves_the_report_stage_one_line_and_no_failure(
    monkeypatch, capsys
):
    """The report stage prints the repro's summary after its page and cards are written: a
    `dvc dag` that fails there costs a line on stderr, not the stage (and so the repro)."""
    from pipeline.core import repro_summary
    from pipeline.core.cli import PipelineError
    from pipeline.stages import report

    def failing_dag() -> str:
        raise PipelineError("dvc dag --dot failed: planted")

    monkeypatch.setattr(report, "repro_started", lambda: time.time())
    monkeypatch.setattr(repro_summary, "dag_dot", failing_dag)
    report.print_repro_summary()
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == "report: no summary of the repro: dvc dag --dot failed: planted\n"
