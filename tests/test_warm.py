"""The warm server: a stage run through it behaves as the same stage run cold, in its own process;
a server only serves the code and environment it imported. Real servers, real forks; the stage
runs that train models through it are the end-to-end tests (`dvc repro` uses it throughout)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core import timing
from pipeline.runtime import warm
from tests.conftest import REPO


def launch(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def our_servers() -> list[dict]:
    return [s for s in warm.servers() if s["package"] == str(warm.PACKAGE_DIR)]


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_stage_through_the_warm_server_fails_exactly_as_it_does_cold(tmp_path: Path):
    """Arguments, working directory, environment, both streams and the exit status reach the
    caller unchanged: a params file with a typo gives the same one line and exit code."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["common"]["epocs"] = params["train"]["common"].pop("epochs")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(params))
    args = ("train", "--model", "fnn", "--params", "typo.yaml")

    cold = launch(tmp_path, *args, PIPELINE_WARM="0")
    warm_first = launch(tmp_path, *args)  # starts a server
    warm_again = launch(tmp_path, *args)  # reuses it
    debug = launch(tmp_path, *args, PIPELINE_DEBUG="1")  # the environment reaches the stage

    assert cold.returncode == 1
    assert cold.stderr.count("\n") == 1 and "train.common.epocs" in cold.stderr, cold.stderr
    for result in (warm_first, warm_again):
        assert (result.returncode, result.stdout, result.stderr) == (1, "", cold.stderr)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    (server,) = our_servers()
    log = Path(server["socket"]).with_suffix(".log").read_text()
    served = [line for line in log.splitlines() if line.startswith("train --model fnn")]
    assert len(served) >= 3 and all(str(tmp_path) in line for line in served), log[-2000:]

    # `--help` goes to standard output with status 0, through the same server.
    helped = launch(tmp_path, "train", "--help")
    assert helped.returncode == 0 and "--model" in helped.stdout and helped.stderr == ""
    assert our_servers() == [server]

    stopped = subprocess.run(
        [sys.executable, "-m", "pipeline.runtime.warm", "stop"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    assert gone(int(server["pid"])), "the server did not stop"
    assert our_servers() == []


def test_stages_without_tensorflow_run_in_the_calling_process(tmp_path: Path):
    result = launch(tmp_path, "report", "--params", "missing.yaml", PIPELINE_WARM="1")
    assert result.returncode == 1
    assert result.stderr.startswith("report: error:") and "missing.yaml" in result.stderr
    unknown = launch(tmp_path, "deploy")
    assert unknown.returncode == 2 and unknown.stderr.startswith("usage: python -m pipeline")


def test_the_child_takes_the_callers_directory_environment_limits_and_arguments(tmp_path: Path):
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    request = {
        **warm.call("evaluate", ["--model", "lstm"]),
        "cwd": str(tmp_path),
        "env": {"ONLY_IN_THE_CALLER": "yes", "PATH": os.environ["PATH"]},
        "limits": {"RLIMIT_FSIZE": (limit, hard)},
        "first_line": time.perf_counter() - 5.0,  # the caller started 5 s ago
        "startup": 0.25,
    }
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # what a server's child does before it runs the stage
        try:
            warm.adopt(request)
            seen = {
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
                "argv": sys.argv[1:],
                "imports": timing.StageTimer("x").seconds["imports"],
                "startup": timing.startup(),
            }
            os.write(writer, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as stream:
        seen = json.loads(stream.read())
    os.waitpid(child, 0)
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"] == request["env"]
    assert seen["fsize"] == limit
    assert seen["argv"] == ["--model", "lstm"]
    assert seen["startup"] == 0.25
    assert 5.0 <= seen["imports"] < 60  # counted from the caller's first line, not the fork's


def test_a_server_serves_only_the_code_and_environment_it_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    package = tmp_path / "pipeline"
    shutil.copytree(warm.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(warm, "PACKAGE_DIR", package)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    original = warm.server_key()
    assert warm.server_key() == original

    monkeypatch.setenv("UNRELATED_SETTING", "1")  # read by nothing at import time
    assert warm.server_key() == original
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # read by TensorFlow when it loads
    assert warm.server_key() != original
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")

    train = package / "train.py"
    train.write_text(train.read_text() + "\n# edited\n")
    assert warm.server_key() != original
    train.write_text(train.read_text().removesuffix("\n# edited\n"))
    assert warm.server_key() == original

    monkeypatch.setattr(warm, "PACKAGE_DIR", tmp_path / "elsewhere")  # same code, other copy
    shutil.copytree(package, tmp_path / "elsewhere")
    assert warm.server_key() != original


def test_the_servers_folder_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = warm.runtime_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)  # another user could then replace a socket
    with pytest.raises(warm.Unavailable, match="not a private folder"):
        warm.runtime_dir()
