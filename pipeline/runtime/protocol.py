"""What the warm server and its callers share: the key a server listens under, where its socket
lives, and the messages on that socket.

A call is one frame (a 4-byte length, then the call as JSON) sent with the caller's standard
streams as file descriptors. The server answers in JSON lines: `{"pid": N}` when the stage's
child runs, or `{"refused": why}` when it will not fork (the caller then runs the stage cold);
then, once the child has ended, `{"exit": code}` or `{"signal": number}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `pipeline` package this server runs
# The stages that import TensorFlow.
WARM_STAGES = ("train", "gan", "compress", "evaluate", "ensemble")
HEADER = struct.Struct("!I")
# Environment variables that differ between calls a server should serve alike, and that nothing
# reads while importing: every other variable is part of the key, as any may be read at import
# time (HOME, KERAS_HOME and MPLCONFIGDIR are; so are TF_*, CUDA*, PYTHON* and the BLAS ones).
VOLATILE_ENV = frozenset(
    {
        # The shell's bookkeeping; the working directory travels with each call.
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "COLUMNS",
        "LINES",
        # Set by DVC for each stage's command (`dvc repro` runs all of them through one server),
        # and by `dvc exp run` for each experiment.
        "DVC_STAGE",
        "DVC_ROOT",
        "DVC_EXP_NAME",
        "DVC_EXP_BASELINE_REV",
        # Set by `mlflow run` for each project run; read by the stage (pipeline.core.tracking).
        "MLFLOW_RUN_ID",
        # The pipeline's own switches, read when a stage runs, never at import.
        "PIPELINE_WARM",
        "PIPELINE_WARM_IDLE",
        "PIPELINE_DEBUG",
        "PIPELINE_VERBOSE",
        "PIPELINE_BACKUP_EVERY_S",
        # Set by pytest for each test and phase.
        "PYTEST_CURRENT_TEST",
    }
)


class Unavailable(Exception):
    """No warm server can serve this call: the stage runs in this process instead."""


class Call(TypedDict):
    """What a child needs to run a stage as its caller would."""

    stage: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    limits: dict[str, tuple[int, int]]
    affinity: list[int]  # the cores the caller may run on (`taskset`, a container's cpuset)
    first_line: float
    startup: float | None


class ServerInfo(TypedDict):
    pid: int
    package: str
    socket: str


def server_key() -> str:
    """Everything a server's imports depend on; a server only serves calls with its own key."""
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            digest.update(repr(part).encode() + b"\0")

    add(sys.executable, sys.version, str(PACKAGE_DIR))
    for entry in sys.path[1:]:  # [0] is the caller's directory; the package's is added above
        with contextlib.suppress(OSError):
            add(entry, os.stat(entry).st_mtime_ns)  # a pip install changes the folder
    for source in sorted(PACKAGE_DIR.rglob("*.py")):
        add(str(source.relative_to(PACKAGE_DIR)), source.read_bytes())
    add(sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV))
    return digest.hexdigest()[:24]


def runtime_dir() -> Path:
    """A folder only this user can enter, for the servers' sockets, locks and logs."""
    folder = Path(tempfile.gettempdir()) / f"pipeline-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not folder.is_dir():
        raise Unavailable(f"{folder} is not a private folder of this user")
    return folder


def server_address() -> Path:
    """The socket of the server for this code and environment (its log is beside it)."""
    address = runtime_dir() / f"{server_key()}.sock"
    if len(str(address)) > 100:  # AF_UNIX addresses hold at most 107 bytes
        raise Unavailable(f"socket path too long: {address}")
    return address


def connect(address: Path) -> socket.socket | None:
    """A connection to the server at `address`, or None when none listens there."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(address))
    except OSError:
        connection.close()
        return None
    return connection


def frame(call: Call) -> bytes:
    payload = json.dumps(call).encode()
    return HEADER.pack(len(payload)) + payload


def line(message: Mapping[str, object]) -> bytes:
    return (json.dumps(message) + "\n").encode()
