"""The warm server: a stage run through it behaves as the same stage run cold, in its own process;
a server only serves the code and environment it imported. Real servers, real forks; the stage
runs that train models through it are the end-to-end tests (`dvc repro` uses it throughout)."""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.core import timing
from pipeline.runtime import client, protocol
from pipeline.runtime import server as warm_server
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


def our_servers() -> list[protocol.ServerInfo]:
    return [s for s in warm_server.servers() if s["package"] == str(protocol.PACKAGE_DIR)]


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
        [sys.executable, "-m", "pipeline.runtime.server", "stop"],
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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: no narrower set to take")
def test_the_child_takes_the_callers_directory_environment_limits_cores_and_arguments(
    tmp_path: Path,
):
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    request: protocol.Call = {
        **client.call("evaluate", ["--model", "lstm"]),
        "cwd": str(tmp_path),
        "env": {"ONLY_IN_THE_CALLER": "yes", "PATH": os.environ["PATH"]},
        "limits": {"RLIMIT_FSIZE": (limit, hard)},
        "affinity": [min(os.sched_getaffinity(0))],  # as under `taskset -c <one core>`
        "first_line": time.perf_counter() - 5.0,  # the caller started 5 s ago
        "startup": 0.25,
    }
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # what a server's child does before it runs the stage
        try:
            warm_server.adopt(request)
            seen = {
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
                "cores": sorted(os.sched_getaffinity(0)),
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
    assert seen["cores"] == request["affinity"]
    assert seen["argv"] == ["--model", "lstm"]
    assert seen["startup"] == 0.25
    assert 5.0 <= seen["imports"] < 60  # counted from the caller's first line, not the fork's


def test_a_child_runs_only_on_cores_the_server_can_give_it_exactly():
    """A caller in another cpuset may name cores this server cannot use: the call is refused
    (and the stage runs cold, on the caller's cores) rather than run elsewhere or crash."""
    own = os.sched_getaffinity(0)
    assert warm_server.can_run_on(sorted(own))
    assert not warm_server.can_run_on([max(own) + 4096])  # no such core here
    assert not warm_server.can_run_on([])
    assert os.sched_getaffinity(0) == own  # the server's own cores are left as they were


def test_a_server_serves_only_the_code_and_environment_it_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    package = tmp_path / "pipeline"
    shutil.copytree(protocol.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(protocol, "PACKAGE_DIR", package)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    original = protocol.server_key()
    assert protocol.server_key() == original

    monkeypatch.setenv("UNRELATED_SETTING", "1")  # any variable may be read at import time
    assert protocol.server_key() != original
    monkeypatch.delenv("UNRELATED_SETTING")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # read by TensorFlow when it loads
    assert protocol.server_key() != original
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")

    train = package / "stages" / "train.py"
    train.write_text(train.read_text() + "\n# edited\n")
    assert protocol.server_key() != original
    train.write_text(train.read_text().removesuffix("\n# edited\n"))
    assert protocol.server_key() == original

    monkeypatch.setattr(protocol, "PACKAGE_DIR", tmp_path / "elsewhere")  # same code, other copy
    shutil.copytree(package, tmp_path / "elsewhere")
    assert protocol.server_key() != original


def test_the_servers_folder_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = protocol.runtime_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)  # another user could then replace a socket
    with pytest.raises(protocol.Unavailable, match="not a private folder"):
        protocol.runtime_dir()


# --- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HOME", "KERAS_HOME", "MPLCONFIGDIR"])
def test_the_key_changes_with_a_folder_that_libraries_read_at_import(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Keras and Matplotlib fix their cache and config folders as they load (~/.keras)."""
    monkeypatch.delenv(name, raising=False)
    original = protocol.server_key()
    monkeypatch.setenv(name, str(tmp_path))
    assert protocol.server_key() != original
    monkeypatch.delenv(name)
    assert protocol.server_key() == original


def test_the_key_ignores_the_variables_that_differ_between_stages_of_one_run(
    monkeypatch: pytest.MonkeyPatch,
):
    """`dvc repro` sets DVC_STAGE (and DVC_ROOT) per stage, the shell PWD, SHLVL and _: the
    ingest stage that starts a server and every TensorFlow stage after it share one key."""
    assert {"DVC_STAGE", "DVC_ROOT", "PWD", "SHLVL", "_"} <= protocol.VOLATILE_ENV
    for name in protocol.VOLATILE_ENV:
        monkeypatch.setenv(name, "ingest")
    ingest = protocol.server_key()
    for name in protocol.VOLATILE_ENV:
        monkeypatch.setenv(name, "train@cnn")
        assert protocol.server_key() == ingest, name
        monkeypatch.delenv(name)
        assert protocol.server_key() == ingest, name


# --- a server made for a test: no imports; the child's stage exits with its argument ---------

STUB_SERVER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from pipeline.runtime import client, server

    # In the child, sys.argv is the call's: ["-m pipeline.stages.train", CODE].
    client.run_here = lambda stage: int(sys.argv[1])
    if "--grow-a-thread" in sys.argv:
        threading.Thread(target=threading.Event().wait, name="grown", daemon=True).start()
    server.serve(Path(sys.argv[1]), core=(), later=())
    """
)
STUB_CALLER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.runtime import client

    def no_other_server(address, log):
        raise client.Unavailable("the test's server does not listen")

    client.server_address = lambda: Path(sys.argv[1])
    client._spawn = no_other_server
    try:
        sys.exit(client.run("train", sys.argv[2:]))
    except client.Unavailable as why:
        print(f"unavailable: {why}")
        sys.exit(99)
    """
)


@contextlib.contextmanager
def stub_server(folder: Path, *flags: str) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A real serve loop, idle limit 600 s: it only ever wakes for a call or a signal."""
    address, log = folder / "stub.sock", folder / "stub.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", STUB_SERVER, str(address), *flags],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_WARM_IDLE": "600"},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "ready" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield address, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def call_stub(address: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", STUB_CALLER, str(address), *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,  # far below the server's idle limit: only SIGCHLD can end the call in time
    )


# --- the serve loop ---------------------------------------------------------------------------


def test_the_serve_loop_sleeps_on_signals_and_calls_with_no_polling_timeout():
    tree = ast.parse(textwrap.dedent(inspect.getsource(warm_server.serve)))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = {ast.unparse(node.func) for node in calls}
    assert {"signal.set_wakeup_fd", "signal.signal", "select.select"} <= names
    (select_call,) = [node for node in calls if ast.unparse(node.func) == "select.select"]
    timeout = select_call.args[3]
    assert not isinstance(timeout, ast.Constant), ast.unparse(timeout)  # no fixed poll
    assert "0.5" not in ast.unparse(tree)


def test_a_child_that_ends_is_reaped_at_once_not_at_the_idle_deadline(tmp_path: Path):
    with stub_server(tmp_path) as (address, process):
        first = call_stub(address, "7")
        second = call_stub(address, "0")
        assert process.poll() is None  # still serving
    assert (first.returncode, second.returncode) == (7, 0), first.stdout + second.stdout
    log = (tmp_path / "stub.log").read_text()
    assert log.count(" ended: ") == 2, log


def test_stop_wakes_an_idle_server_which_then_exits(tmp_path: Path):
    with stub_server(tmp_path) as (address, process):
        info: protocol.ServerInfo = {"pid": process.pid, "package": "", "socket": str(address)}
        assert warm_server.stop([info]) == [process.pid]
        assert process.wait(timeout=30) == 0  # not after 600 s
    assert not address.exists()
    assert "refused" not in (tmp_path / "stub.log").read_text()  # the wake-up is no call


# --- fork safety ------------------------------------------------------------------------------


def in_fresh_process(body: str) -> None:
    """Run `body`'s assertions in a new interpreter that imported only the server module: thread
    counts are per process, and this one holds whatever threads earlier tests left (tqdm's
    monitor thread, say)."""
    code = textwrap.dedent(
        """
        import _thread, threading, time
        from pipeline.runtime import server as warm_server

        def threads_back_to(count, timeout=10):
            # a joined thread's task leaves /proc a moment later
            deadline = time.monotonic() + timeout
            while warm_server.native_threads() > count:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True
        """
    ) + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_python_thread_besides_the_main_one_is_a_fork_hazard():
    in_fresh_process(
        """
        allowed = warm_server.native_threads()
        assert warm_server.fork_hazard(allowed) is None
        release = threading.Event()
        thread = threading.Thread(target=release.wait, name="holder")
        thread.start()
        try:
            hazard = warm_server.fork_hazard(allowed + 1)  # even one the count allows
        finally:
            release.set()
            thread.join()
        assert hazard is not None and "1 Python thread" in hazard and "holder" in hazard, hazard
        assert threads_back_to(allowed)
        assert warm_server.fork_hazard(allowed) is None
        """
    )


def test_a_native_thread_the_imports_did_not_start_is_a_fork_hazard():
    """A thread Python's `threading` does not know of (as a library's C code starts one)."""
    in_fresh_process(
        """
        allowed = warm_server.native_threads()
        held = _thread.allocate_lock()
        held.acquire()
        _thread.start_new_thread(held.acquire, ())  # blocks until released
        try:
            hazard = warm_server.fork_hazard(allowed)
        finally:
            held.release()
        assert hazard is not None and "1 thread(s) more than its imports started" in hazard
        assert threads_back_to(allowed)
        assert warm_server.fork_hazard(allowed) is None
        """
    )


def test_a_server_that_has_grown_a_thread_refuses_to_fork_and_retires(tmp_path: Path):
    with stub_server(tmp_path, "--grow-a-thread") as (address, process):
        refused = call_stub(address, "0")
        assert process.wait(timeout=30) == 0  # retired: it takes no more calls and exits
    assert refused.returncode == 99, refused.stdout + refused.stderr
    assert refused.stdout.count("\n") == 1
    assert "refused the call" in refused.stdout and "grown" in refused.stdout
    assert not address.exists()  # the next caller starts a fresh server
    log = (tmp_path / "stub.log").read_text()
    assert "will not fork for train" in log and " ended: " not in log, log


# --- the cold path ----------------------------------------------------------------------------


def test_the_caller_imports_neither_the_server_nor_tensorflow():
    probe = (
        "import sys, pipeline.__main__; "
        "print(sorted(m for m in sys.modules "
        "if m == 'pipeline.runtime.server' or m.startswith('tensorflow')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr
    source = ast.parse(Path(client.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(source)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    server_module = "pipeline.runtime.server"
    assert not any(name.startswith(server_module) for name in imported), imported
