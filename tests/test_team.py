"""A team's tracking server, for real: PostgreSQL holds the runs, a separate folder the files.

A throwaway PostgreSQL cluster and `make tracking-server` (the README's command) listen on
127.0.0.1; the lineage of one model (train, compress, evaluate) is run against the server and
read back through the REST API only, as any other client of the team would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e import (
    TINY_BASELINE,
    TINY_COMPRESS,
    TINY_EVALUATE,
    TINY_PLAIN_TRAIN,
    commit,
    copy_project,
    free_port,
    lineage_id,
    listening_hosts,
    server,
    update_params,
)

pytestmark = pytest.mark.slow
DATABASE = "mlflow"
ROLE = "mlflow"


@dataclass(frozen=True)
class Cluster:
    bindir: Path
    folder: Path  # data directory, log and the Unix socket, all owned by the server's user
    port: int

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the cluster's superuser over its private Unix socket (no password)."""
        command = [str(self.bindir / "psql"), "-h", str(self.folder), "-p", str(self.port)]
        command += ["-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-tA", "-f", "-"]
        # SQL on stdin: the role's password stays out of the process list.
        return as_server_user(command, input_text=sql).stdout.strip()


def postgres_bindir() -> Path:
    """The server binaries: `pg_config --bindir`, else Debian's /usr/lib/postgresql/<v>/bin."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name.split(".")[0]), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl): `make test-tools` installs them")


def as_server_user(
    command: list[str], input_text: str | None = None
) -> subprocess.CompletedProcess:
    """initdb and postgres refuse to run as root: as root, run them as the `postgres` user."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(
        command, input=input_text, capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def server_owned_folder() -> Path:
    """A fresh folder the server's user owns (pytest's own temporary folders are root's, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    return folder


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway cluster on a free port of 127.0.0.1; TCP logins need a password."""
    cluster = Cluster(postgres_bindir(), server_owned_folder(), free_port())
    data = cluster.folder / "data"
    try:
        # Superuser over the private socket only; over TCP every login needs its password.
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256"]
        initdb = [str(cluster.bindir / "initdb"), "-D", str(data), "-U", "postgres"]
        as_server_user([*initdb, "-E", "UTF8", "--locale=C", *auth, "--no-sync"])
        options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.folder}"
        log = str(cluster.folder / "server.log")
        pg_ctl = [str(cluster.bindir / "pg_ctl"), "-D", str(data)]
        as_server_user([*pg_ctl, "-l", log, "-o", options, "-w", "start"])
        try:
            yield cluster
        finally:
            as_server_user([*pg_ctl, "-m", "fast", "stop"])
    finally:
        shutil.rmtree(cluster.folder, ignore_errors=True)


def create_database(cluster: Cluster) -> str:
    """The role and database the README tells a team to create; returns the role's password."""
    password = secrets.token_hex(16)
    cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';")
    cluster.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE};")
    return password


def run_tracked(project: Path, uri: str, *command: str) -> subprocess.CompletedProcess:
    """Like tests.e2e.run, but logging to the tracking server (e2e.run removes the variable)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PIPELINE_DEBUG", "PGPASSWORD"):
        env.pop(key, None)  # the pipeline needs no database password: only the server does
    env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run(
        list(command), cwd=project, env=env, capture_output=True, text=True, timeout=900
    )


def rest(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> dict:
    """GET (or POST `body` to) /api/2.0/mlflow/<endpoint>, as JSON."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def as_dict(items: list[dict]) -> dict[str, str]:
    """REST lists params, metrics and tags as [{key, value}, …]."""
    return {item["key"]: item["value"] for item in items}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project")
    tiny = {"train": TINY_PLAIN_TRAIN, "compress": TINY_COMPRESS, "evaluate": TINY_EVALUATE}
    update_params(root, {**tiny, "baseline": TINY_BASELINE})
    commit(root, "tiny params")
    # `make tracking-server` in the copy uses this checkout's environment.
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def test_lineage_on_a_postgres_tracking_server(project: Path, tmp_path: Path, monkeypatch):
    artifacts = tmp_path / "artifacts"  # the server's artifact root, outside the project
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with postgres_cluster() as cluster:
        password = create_database(cluster)
        # No password in the URI nor on a command line: libpq reads PGPASSWORD.
        uri = f"postgresql+psycopg2://{ROLE}@127.0.0.1:{cluster.port}/{DATABASE}"
        monkeypatch.setenv("BACKEND_STORE_URI", uri)
        monkeypatch.setenv("PGPASSWORD", password)
        command = ["make", "tracking-server", f"ARTIFACTS={artifacts}"]
        command += [f"TRACKING_PORT={port}", "TRACKING_WORKERS=1"]
        with server(project, command, f"{base}/health", timeout=300):
            assert listening_hosts(port) == {"127.0.0.1"}
            assert listening_hosts(cluster.port) == {"127.0.0.1"}
            # One lineage: train@fnn, then the later stages that add to its run.
            result = run_tracked(project, base, "dvc", "repro", "evaluate@fnn")
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            for stage in ("train@fnn", "compress@fnn", "evaluate@fnn"):
                assert f"Running stage '{stage}'" in result.stdout
            check_lineage_over_rest(project, base)
            check_artifact_root(project, base, artifacts)
        check_rows_in_postgres(project, cluster)
    # The default SQLite store was never touched.
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()


def check_lineage_over_rest(project: Path, base: str) -> None:
    """Params, train metrics, the logged model and the later stages' metrics, via REST."""
    experiment = rest(base, "experiments/get-by-name", experiment_name="digits")["experiment"]
    # Artifacts go through the server (proxied), not straight to a path clients must share.
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")
    run_id = lineage_id(project, "fnn", base)
    run = rest(base, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "fnn"
    params = as_dict(run["data"]["params"])
    assert params["model.optimizer.name"] == "adam" and params["train.epochs"] == str(
        TINY_PLAIN_TRAIN["common"]["epochs"]
    )
    assert params["data.source"] == "digits"
    assert as_dict(run["data"]["tags"])["dvc_stage"] == "train@fnn"
    # The splits it trained and was tested on, as MLflow datasets named by the prepared data.
    manifest = read(project / "data/prepared/manifest.json")
    datasets = {d["tags"][0]["value"]: d["dataset"] for d in run["inputs"]["dataset_inputs"]}
    assert {context: d["name"] for context, d in datasets.items()} == {
        "training": "digits-train",
        "validation": "digits-val",
        "testing": "digits-test",
    }
    assert {d["digest"] for d in datasets.values()} == {manifest["content_hash"][:36]}
    assert json.loads(datasets["training"]["profile"])["num_rows"] == 1257
    metrics = as_dict(run["data"]["metrics"])
    train = read(project / "reports/train/fnn.json")
    assert metrics["test_accuracy"] == pytest.approx(train["test_accuracy"])
    compressed = read(project / "reports/compress/fnn.json")["variants"]
    assert metrics["compress.int8.accuracy"] == pytest.approx(compressed["int8"]["accuracy"])
    evaluated = read(project / "reports/evaluate/fnn.json")
    assert metrics["evaluate.accuracy"] == pytest.approx(evaluated["clean"]["accuracy"])
    assert metrics["evaluate.robust_accuracy"] == pytest.approx(
        evaluated["adversarial"]["robust_accuracy"]
    )
    check_logged_model(base, experiment["experiment_id"], run)
    check_stage_runs(base, experiment["experiment_id"], run_id)


def check_logged_model(base: str, experiment_id: str, run: dict) -> None:
    """MLflow 3: the model is a LoggedModel, an output of the lineage run."""
    (output,) = run["outputs"]["model_outputs"]
    model = rest(base, f"logged-models/{output['model_id']}")["model"]["info"]
    assert model["source_run_id"] == run["info"]["run_id"]
    assert model["experiment_id"] == experiment_id
    assert model["status"] == "LOGGED_MODEL_READY"
    found = rest(base, "logged-models/search", body={"experiment_ids": [experiment_id]})
    assert [m["info"]["model_id"] for m in found["models"]] == [output["model_id"]]


def check_stage_runs(base: str, experiment_id: str, run_id: str) -> None:
    """compress and evaluate: one finished child run each, with that execution's params."""
    found = rest(
        base,
        "runs/search",
        body={
            "experiment_ids": [experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{run_id}'",
        },
    )
    children = {as_dict(r["data"]["tags"])["dvc_stage"]: r for r in found["runs"]}
    assert set(children) == {"compress", "evaluate"}
    assert {r["info"]["status"] for r in children.values()} == {"FINISHED"}
    assert as_dict(children["compress"]["data"]["params"])["compress.prune_epochs"] == "2"
    assert as_dict(children["evaluate"]["data"]["params"])["evaluate.pgd_steps"] == "3"


def check_artifact_root(project: Path, base: str, artifacts: Path) -> None:
    """The files are under the server's artifact root, listed by the server, and nowhere else."""
    run_id = lineage_id(project, "fnn", base)
    listed = rest(base, "artifacts/list", run_id=run_id, path="provenance")
    assert [f["path"] for f in listed["files"]] == ["provenance/dvc_inputs.json"]
    on_disk = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()}
    assert any(f"{run_id}/artifacts/provenance/dvc_inputs.json" in p for p in on_disk), on_disk
    assert any(p.endswith("/artifacts/MLmodel") for p in on_disk), on_disk  # the logged model
    assert not (project / "mlartifacts").exists()


def check_rows_in_postgres(project: Path, cluster: Cluster) -> None:
    """The server wrote to PostgreSQL: the lineage run and its two stage runs, and the model."""
    digest = hashlib.sha256((project / "models/fnn/model.keras").read_bytes()).hexdigest()
    tagged = f"SELECT run_uuid FROM tags WHERE key = 'model_digest' AND value = '{digest}';"
    run_id = cluster.psql(tagged, DATABASE)
    count = cluster.psql("SELECT count(*) FROM runs;", DATABASE)
    assert count == "3"
    owner = cluster.psql(f"SELECT name FROM runs WHERE run_uuid = '{run_id}';", DATABASE)
    assert owner == "fnn"
    assert cluster.psql("SELECT count(*) FROM logged_models;", DATABASE) == "1"
