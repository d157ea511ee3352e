"""Warm start for the stages that need TensorFlow: the caller's side.

DVC runs every stage as a new process, and each TensorFlow stage would pay about 4 s to import
TensorFlow, Keras, tfmot, MLflow and SQLAlchemy before its first line of work: more than a small
model takes to train. `python -m pipeline <stage>` hands such a stage to a warm server instead
(`pipeline.runtime.server`), the way Bazel or Gradle keep a warm server for their builds: one
process that imported those libraries once and forks a fresh child per stage. The child takes
the caller's arguments, working directory, environment, standard streams, resource limits and
CPU affinity,
and runs the stage's `main()` exactly as `python -m pipeline.stages.<stage>` would; the caller
forwards signals to it and exits with its status. Should the caller die (even by SIGKILL), the
child is killed with it.

A server serves one copy of the code, one interpreter and one environment (`protocol.server_key`:
the package's source, `sys.path` and when its folders last changed, and every environment
variable but a few named volatile ones). Any change starts a new server. PIPELINE_WARM=0 runs
each stage in its own cold process, and so does any call no server can take (`Unavailable`).

This module is all the caller imports: it never imports the server, which runs as its own
`python -m pipeline.runtime.server serve ADDRESS` process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.core import timing
from pipeline.runtime.protocol import (
    PACKAGE_DIR,
    WARM_STAGES,
    Call,
    Unavailable,
    connect,
    frame,
    server_address,
)

__all__ = ["Unavailable", "call", "enabled", "prewarm", "run", "run_here"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_LIMITS = ("RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_AS", "RLIMIT_CPU")
_SERVER_START_S = 120.0  # the imports take ~4 s; a loaded machine may need far longer


def enabled(stage: str) -> bool:
    return stage in WARM_STAGES and os.environ.get("PIPELINE_WARM", "1") not in ("0", "")


def run(stage: str, argv: Sequence[str]) -> int:
    """Run `stage` with `argv` in a warm server's child; return its exit status.

    Raises Unavailable, before the stage has started, when no server can take it."""
    address = server_address()
    log = address.with_suffix(".log")
    for attempt in (1, 2):  # a server that reached its idle limit as we called: start one
        connection = connect(address) or _start_server(address, log)
        with connection:
            try:
                socket.send_fds(connection, [frame(call(stage, argv))], [0, 1, 2])
                reader = connection.makefile("r", encoding="utf-8")
                first = reader.readline()
            except OSError as error:
                first, why = "", f"server did not take the call: {error}"
            else:
                why = "server closed the connection before starting the stage"
            if not first:
                if attempt == 1:
                    continue
                raise Unavailable(why)
            started = json.loads(first)
            if "refused" in started:  # a server unfit to fork: it retires, this stage runs cold
                raise Unavailable(f"the server refused the call: {started['refused']}")
            child = int(started["pid"])
            with _forwarding_signals(child):
                last = reader.readline()
            break
    if not last:
        print(
            f"{stage}: error: the warm server ended while the stage ran (process {child}); "
            f"see {log}",
            file=sys.stderr,
        )
        return 1
    outcome = json.loads(last)
    if "signal" in outcome:  # die the way the child died, as a shell would see it
        signal.signal(outcome["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), outcome["signal"])
        return 128 + int(outcome["signal"])
    return int(outcome["exit"])


def call(stage: str, argv: Sequence[str]) -> Call:
    """What a child needs to run `stage` as this process would."""
    return {
        "stage": stage,
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "limits": {name: resource.getrlimit(getattr(resource, name)) for name in _LIMITS},
        "affinity": sorted(os.sched_getaffinity(0)),
        # The child's time split counts from this process's start; waiting for a new server
        # to import its libraries is this stage's import time.
        "first_line": timing.first_line(),
        "startup": timing.startup(),
    }


def _spawn(address: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.server", "serve", str(address)],
            cwd=PACKAGE_DIR.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # outlives this stage; no terminal's Ctrl-C reaches it
        )


def _start_server(address: Path, log: Path) -> socket.socket:
    """Start a server for `address` and wait until it listens. Two callers may race to start
    one; the server's lock lets one win and both connect to it."""
    server = _spawn(address, log)
    deadline = time.monotonic() + _SERVER_START_S
    while time.monotonic() < deadline:
        connection = connect(address)
        if connection is not None:
            return connection
        if server.poll() not in (None, 0):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"server exited with {server.returncode}: {tail[0][:200]}")
        time.sleep(0.02)
    server.kill()
    raise Unavailable(f"server did not listen within {_SERVER_START_S:.0f} s")


def prewarm() -> None:
    """Start a server without waiting for it, when none listens: the stages before the
    TensorFlow ones (ingest, validate) call this, so its imports overlap their work."""
    if os.environ.get("PIPELINE_WARM", "1") in ("0", ""):
        return
    with contextlib.suppress(Unavailable, OSError):
        address = server_address()
        connection = connect(address)
        if connection is not None:
            connection.close()
        else:
            _spawn(address, address.with_suffix(".log"))


@contextlib.contextmanager
def _forwarding_signals(child: int) -> Iterator[None]:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_here(stage: str) -> int:
    """Run a stage's main() in this process, as `python -m pipeline.stages.<stage>` does."""
    from pipeline.core.cli import run_stage

    module = importlib.import_module(f"pipeline.stages.{stage}")
    try:
        run_stage(stage, module.main)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return int(done.code or 0)
        print(done.code, file=sys.stderr)
        return 1
    return 0
