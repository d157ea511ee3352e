"""Warm start for the stages that need TensorFlow.

DVC runs every stage as a new process, and each TensorFlow stage would pay about 4 s to import
TensorFlow, Keras, tfmot, MLflow and SQLAlchemy before its first line of work: more than a small
model takes to train. `python -m pipeline <stage>` hands such a stage to a warm server instead,
the way Bazel or Gradle keep a warm server for their builds: one process that imported those
libraries once and forks a fresh child per stage. The child takes the caller's arguments, working
directory, environment, standard streams and resource limits, and runs the stage's `main()`
exactly as `python -m pipeline.<stage>` would; the caller forwards signals to it and exits with
its status. Should the caller die (even by SIGKILL), the child is killed with it.

A server serves one copy of the code, one interpreter and one environment: the key it listens
under covers the package's source, `sys.path` (and when its folders last changed, so an upgrade
of a library counts) and the environment variables read at import time. Any change starts a new
server. It imports libraries but runs no TensorFlow op, so no runtime, thread pool or device is
set up before a fork. It exits after PIPELINE_WARM_IDLE seconds (default 120) without work;
PIPELINE_WARM=0 runs each stage in its own cold process.

    python -m pipeline.runtime.warm status | stop
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.core import timing

PACKAGE_DIR = Path(__file__).resolve().parent
WARM_STAGES = ("train", "gan", "compress", "evaluate")  # the stages that import TensorFlow
# What the first stage (a train stage, in a full run) needs: imported before the server listens.
CORE = (
    "tensorflow",
    "tf_keras",
    "mlflow",
    "mlflow.tensorflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "dvc.repo",
    "pipeline.stages.train",
    "pipeline.ml.models",
    "pipeline.ml.training",
    "pipeline.ml.distribute",
)
# What the other stages need, imported one at a time while the server waits for calls.
LATER = (
    "mlflow.pyfunc",
    "tensorflow_model_optimization",
    "matplotlib.pyplot",
    *(f"pipeline.stages.{stage}" for stage in WARM_STAGES),
    "pipeline.ml.compression",
    "pipeline.ml.robustness",
    "pipeline.ml.explain",
    "pipeline.ml.inference",
)
# Environment variables that libraries read when they are imported, or the interpreter at start.
_IMPORT_TIME_ENV = ("TF_", "CUDA", "XLA_", "PYTHON", "OMP_", "KMP_", "MKL", "OPENBLAS", "LD_")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_LIMITS = ("RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_AS", "RLIMIT_CPU")
_HEADER = struct.Struct("!I")
_SERVER_START_S = 120.0  # the imports take ~4 s; a loaded machine may need far longer


class Unavailable(Exception):
    """No warm server can serve this call: the stage runs in this process instead."""


def enabled(stage: str) -> bool:
    return stage in WARM_STAGES and os.environ.get("PIPELINE_WARM", "1") not in ("0", "")


def idle_seconds() -> float:
    return float(os.environ.get("PIPELINE_WARM_IDLE", "120"))


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
    add(sorted((k, v) for k, v in os.environ.items() if k.startswith(_IMPORT_TIME_ENV)))
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


# --- the caller -------------------------------------------------------------------------------


def run(stage: str, argv: Sequence[str]) -> int:
    """Run `stage` with `argv` in a warm server's child; return its exit status.

    Raises Unavailable, before the stage has started, when no server can take it."""
    address = server_address()
    log = address.with_suffix(".log")
    for attempt in (1, 2):  # a server that reached its idle limit as we called: start one
        connection = _connect(address) or _start_server(address, log)
        with connection:
            payload = json.dumps(call(stage, argv)).encode()
            try:
                socket.send_fds(connection, [_HEADER.pack(len(payload)) + payload], [0, 1, 2])
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
            child = int(json.loads(first)["pid"])
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


def call(stage: str, argv: Sequence[str]) -> dict[str, Any]:
    """What a child needs to run `stage` as this process would."""
    return {
        "stage": stage,
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "limits": {name: resource.getrlimit(getattr(resource, name)) for name in _LIMITS},
        # The child's time split counts from this process's start; waiting for a new server
        # to import its libraries is this stage's import time.
        "first_line": timing.first_line(),
        "startup": timing.startup(),
    }


def _connect(address: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(address))
    except OSError:
        connection.close()
        return None
    return connection


def _spawn(address: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.warm", "serve", str(address)],
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
        connection = _connect(address)
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
        connection = _connect(address)
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


# --- the server -------------------------------------------------------------------------------


def serve(address: Path) -> None:
    """Import the libraries, then fork a child per call until idle. Single-threaded, so each
    fork copies a process with no other thread and no held lock."""
    lock = address.with_suffix(".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for the same key is starting or running
    for module in CORE:
        importlib.import_module(module)
    later = [functools.partial(importlib.import_module, m) for m in LATER]
    later.append(_requirements_map)
    address.unlink(missing_ok=True)  # left by a server that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(address))
    os.chmod(address, 0o600)
    listener.listen(32)
    bound = address.stat().st_ino
    info = address.with_suffix(".json")
    info.write_text(json.dumps({"pid": os.getpid(), "package": str(PACKAGE_DIR)}))
    print(f"warm server {os.getpid()} ready: {address}", flush=True)
    calls: dict[int, socket.socket] = {}
    last_work = time.monotonic()
    serving = True
    try:
        while calls or (serving and time.monotonic() - last_work < idle_seconds()):
            readable, _, _ = select.select(
                [listener] if serving else [], [], [], 0 if later else 0.5
            )
            if not readable and later:
                later.pop(0)()  # one import at a time: a call never waits long
            if readable:
                connection, _ = listener.accept()
                child = _accept(connection, [listener, lock, *calls.values()])
                if child is not None:
                    calls[child] = connection
            for child, status in _finished(calls):
                last_work = time.monotonic()
                outcome = (
                    {"signal": os.WTERMSIG(status)}
                    if os.WIFSIGNALED(status)
                    else {"exit": os.waitstatus_to_exitcode(status)}
                )
                print(f"{child} ended: {outcome}", flush=True)
                with contextlib.suppress(OSError):
                    calls[child].sendall((json.dumps(outcome) + "\n").encode())
                calls.pop(child).close()
            if serving and _replaced(address, bound):
                # `stop`, or a newer server took the address: take no more calls, let a new
                # server start (the lock), and wait for the stages running here to end.
                serving = False
                listener.close()
                lock.close()
                later.clear()
    finally:
        if serving:
            address.unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(info.read_text())["pid"] == os.getpid():
                info.unlink()
        print(f"warm server {os.getpid()} stopped", flush=True)


def _requirements_map() -> None:
    """MLflow maps installed packages to modules before it logs a model (~0.3 s a process)."""
    from mlflow.utils import requirements_utils

    with contextlib.suppress(AttributeError):  # a private helper: only a cache, if it moves
        requirements_utils._init_packages_to_modules_map()


def _replaced(address: Path, inode: int) -> bool:
    try:
        return address.stat().st_ino != inode
    except FileNotFoundError:
        return True


def _finished(calls: dict[int, socket.socket]) -> list[tuple[int, int]]:
    done = []
    for child in list(calls):
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            done.append((pid, status))
    return done


def _accept(connection: socket.socket, closing: list[Any]) -> int | None:
    """Read one call and fork its child, which closes `closing` (the server's own files); the
    server answers with the child's pid."""
    fds: list[int] = []
    try:
        connection.settimeout(10)
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid[1] != os.getuid():
            raise PermissionError(f"call from uid {uid[1]}")
        data, fds, _flags, _addr = socket.recv_fds(connection, 1 << 16, 3)
        if len(fds) != 3 or len(data) < _HEADER.size:
            raise ValueError("malformed call")
        (size,) = _HEADER.unpack_from(data)
        while len(data) - _HEADER.size < size:
            more = connection.recv(1 << 16)
            if not more:
                raise ValueError("truncated call")
            data += more
        request = json.loads(data[_HEADER.size : _HEADER.size + size])
        connection.settimeout(None)
    except (OSError, ValueError) as error:
        print(f"warm server: refused a call: {error}", flush=True)
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    child = os.fork()
    if child == 0:
        for item in closing:
            item.close()
        _child(connection, request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    print(
        f"{request['stage']} {' '.join(request['argv'])} in {request['cwd']}: {child}", flush=True
    )
    with contextlib.suppress(OSError):  # a caller gone already: its child follows it
        connection.sendall((json.dumps({"pid": child}) + "\n").encode())
    return child


def _child(connection: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """Become the caller's stage process, run the stage, exit with its status."""
    code = 2
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # Buffered as the interpreter would buffer them: by line for a terminal or with
        # PYTHONUNBUFFERED (output shows as it comes), by block into a pipe or file.
        by_line = os.isatty(1) or bool(request["env"].get("PYTHONUNBUFFERED"))
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams
        sys.stdout = open(1, "w", buffering=1 if by_line else -1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        adopt(request)
        threading.Thread(target=_die_with_caller, args=(connection,), daemon=True).start()
        code = run_here(request["stage"])
    except BaseException:  # what the interpreter does with an uncaught error (--debug)
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # as at the end of any interpreter (MLflow registers some)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def adopt(request: dict[str, Any]) -> None:
    """Take the caller's directory, environment, resource limits, arguments and clock."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, (soft, hard) in request["limits"].items():
        with contextlib.suppress(ValueError, OSError):  # a limit above the server's own
            resource.setrlimit(getattr(resource, name), (soft, hard))
    timing.restart(request["first_line"], request["startup"])
    sys.argv = [f"-m pipeline.stages.{request['stage']}", *request["argv"]]


def _die_with_caller(connection: socket.socket) -> None:
    """The caller sends nothing more: end of stream means it is gone, as a killed stage is."""
    with contextlib.suppress(OSError):
        while connection.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def run_here(stage: str) -> int:
    """Run a stage's main() in this process, as `python -m pipeline.<stage>` does."""
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


# --- status and stop --------------------------------------------------------------------------


def servers() -> list[dict[str, Any]]:
    """The running servers: pid, package folder and socket."""
    found = []
    with contextlib.suppress(Unavailable):
        for info in sorted(runtime_dir().glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(int(json.loads(info.read_text())["pid"]), 0)  # gone: ProcessLookupError
                found.append(
                    {**json.loads(info.read_text()), "socket": str(info.with_suffix(".sock"))}
                )
    return found


def stop(which: list[dict[str, Any]] | None = None) -> list[int]:
    """Stop these servers (all of this user's by default): each exits once its children end."""
    stopped = []
    for server in servers() if which is None else which:
        Path(server["socket"]).unlink(missing_ok=True)
        stopped.append(int(server["pid"]))
    return stopped


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"] and len(args) == 2:
        serve(Path(args[1]))
    elif args == ["status"]:
        for server in servers():
            log = Path(server["socket"]).with_suffix(".log")
            print(f"{server['pid']}\t{server['package']}\t{server['socket']}\t{log}")
    elif args == ["stop"]:
        print(f"stopping {len(stop())} warm server(s)")
    else:
        raise SystemExit("usage: python -m pipeline.runtime.warm status | stop")


if __name__ == "__main__":
    main()
