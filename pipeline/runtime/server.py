"""The warm server: imports TensorFlow and MLflow once, then forks a child per stage.

`pipeline.runtime.client` starts it as `python -m pipeline.runtime.server serve ADDRESS` and hands
it calls on that socket (`pipeline.runtime.protocol`). It imports libraries but runs no TensorFlow
op, so no runtime, thread pool or device is set up before a fork; it starts no thread of its own.
Its only other threads are the idle ones the libraries start as they load (with TensorFlow 2.21
on Linux: OpenBLAS's pool, jemalloc's background thread and one more). Before each fork it checks
that no other thread runs (no Python thread at all, no native thread beyond those); when one does,
it refuses the call, so the caller runs the stage cold, and retires. It sleeps until a call comes
or a child ends (SIGCHLD, through a wake-up socket), and exits after PIPELINE_WARM_IDLE seconds
(default 120) without work.

    python -m pipeline.runtime.server status | stop      (or python -m pipeline.runtime ...)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TypeAlias

from pipeline.core import timing
from pipeline.runtime import client
from pipeline.runtime.protocol import (
    HEADER,
    PACKAGE_DIR,
    WARM_STAGES,
    Call,
    ServerInfo,
    Unavailable,
    connect,
    line,
    runtime_dir,
)

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

Closable: TypeAlias = socket.socket | IO[str]  # what a child closes of the server's


def idle_seconds() -> float:
    return float(os.environ.get("PIPELINE_WARM_IDLE", "120"))


def native_threads() -> int:
    """The threads of this process, as Linux lists them: Python's and every library's own."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: only Python's threads can be counted
        return threading.active_count()


def fork_hazard(allowed: int) -> str | None:
    """Why forking this process now would be unsafe, or None. A fork copies only the calling
    thread: any other thread's held locks stay held in the child forever. `allowed` is how many
    threads the imports started (fork-aware library pools); any other thread is a hazard."""
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"it runs {len(others)} Python thread(s) besides its main one ({', '.join(others)})"
    count = native_threads()
    if count > allowed:
        return f"it runs {count - allowed} thread(s) more than its imports started ({count})"
    return None


def _threads_started_by(step: Callable[[], object]) -> int:
    before = native_threads()
    step()
    return max(0, native_threads() - before)


def _on_child(_signum: int, _frame: FrameType | None) -> None:
    """Nothing to do here: the signal's byte on the wake-up socket is what wakes the loop."""


def _drain(wake: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while wake.recv(4096):
            pass


def serve(address: Path, core: Sequence[str] = CORE, later: Sequence[str] = LATER) -> None:
    """Import `core`, then fork a child per call until idle, importing `later` between calls."""
    lock = address.with_suffix(".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for the same key is starting or running
    for module in core:
        importlib.import_module(module)
    allowed = native_threads()  # the pools the libraries started as they loaded
    steps: list[Callable[[], object]] = [
        functools.partial(importlib.import_module, m) for m in later
    ]
    if "mlflow" in core:  # MLflow's own cache, once MLflow is loaded
        steps.append(_requirements_map)
    address.unlink(missing_ok=True)  # left by a server that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(address))
    os.chmod(address, 0o600)
    listener.listen(32)
    bound = address.stat().st_ino
    info = address.with_suffix(".json")
    info.write_text(json.dumps({"pid": os.getpid(), "package": str(PACKAGE_DIR)}))
    # A child's end writes SIGCHLD's number to `wake_w`; the loop sleeps on `wake_r`, with no
    # thread and no polling, and a signal between two looks at the children is never lost.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.signal(signal.SIGCHLD, _on_child)
    signal.siginterrupt(signal.SIGCHLD, False)  # other system calls resume (SA_RESTART)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    print(f"warm server {os.getpid()} ready: {address} ({allowed} threads)", flush=True)
    calls: dict[int, socket.socket] = {}
    idle = idle_seconds()
    last_work = time.monotonic()
    serving = True
    try:
        while calls or (serving and time.monotonic() - last_work < idle):
            if serving and steps:
                timeout: float | None = 0.0  # a look for work; with none, one more import
            elif calls:
                timeout = None  # until a call comes or a child ends
            else:
                timeout = max(0.0, last_work + idle - time.monotonic())
            watched = [wake_r, listener] if serving else [wake_r]
            readable, _, _ = select.select(watched, [], [], timeout)
            if wake_r in readable:
                _drain(wake_r)
            if not readable and serving and steps:
                allowed += _threads_started_by(steps.pop(0))  # a call never waits long
            hazard = None
            if serving and listener in readable:
                connection, _ = listener.accept()
                hazard = fork_hazard(allowed)
                closing: list[Closable] = [listener, lock, wake_r, wake_w, *calls.values()]
                child = _accept(connection, closing, hazard)
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
                    calls[child].sendall(line(outcome))
                calls.pop(child).close()
            if serving and (hazard is not None or _replaced(address, bound)):
                # `stop`, a newer server at the address, or a thread that makes forks unsafe:
                # take no more calls, let a new server start (the lock), and wait for the
                # stages running here to end.
                if hazard is not None and not _replaced(address, bound):
                    address.unlink(missing_ok=True)  # the next caller starts a fresh server
                serving = False
                listener.close()
                lock.close()
                steps.clear()
    finally:
        signal.set_wakeup_fd(-1)
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


def _accept(connection: socket.socket, closing: list[Closable], hazard: str | None) -> int | None:
    """Read one call and fork its child, which closes `closing` (the server's own files); the
    server answers with the child's pid, or refuses the call when `hazard` says why it must."""
    fds: list[int] = []
    try:
        connection.settimeout(10)
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid[1] != os.getuid():
            raise PermissionError(f"call from uid {uid[1]}")
        data, fds, _flags, _addr = socket.recv_fds(connection, 1 << 16, 3)
        if not data and not fds:  # `stop` connects to wake the server: no call
            connection.close()
            return None
        if len(fds) != 3 or len(data) < HEADER.size:
            raise ValueError("malformed call")
        (size,) = HEADER.unpack_from(data)
        while len(data) - HEADER.size < size:
            more = connection.recv(1 << 16)
            if not more:
                raise ValueError("truncated call")
            data += more
        request: Call = json.loads(data[HEADER.size : HEADER.size + size])
        connection.settimeout(None)
    except (OSError, ValueError) as error:
        print(f"warm server: refused a call: {error}", flush=True)
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    if hazard is not None:
        print(f"warm server: will not fork for {request['stage']}: {hazard}; retiring", flush=True)
        _refuse(connection, fds, hazard)
        return None
    if not can_run_on(request["affinity"]):  # the caller then runs the stage cold, as it asked
        _refuse(connection, fds, f"cannot run on the caller's cores {request['affinity']}")
        return None
    child = os.fork()
    if child == 0:
        signal.set_wakeup_fd(-1)  # the server's signals are no longer this process's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for item in closing:
            item.close()
        _child(connection, request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    print(
        f"{request['stage']} {' '.join(request['argv'])} in {request['cwd']}: {child}", flush=True
    )
    with contextlib.suppress(OSError):  # a caller gone already: its child follows it
        connection.sendall(line({"pid": child}))
    return child


def _refuse(connection: socket.socket, fds: list[int], why: str) -> None:
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        connection.sendall(line({"refused": why}))
    connection.close()


def can_run_on(cores: list[int]) -> bool:
    """Whether a child may run on exactly `cores`: a caller in another container or cpuset can
    name cores this server may not use (the kernel refuses them, or silently drops some). Tried
    on the server's own thread, then undone."""
    own = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
        return os.sched_getaffinity(0) == set(cores)
    except OSError:
        return False
    finally:
        os.sched_setaffinity(0, own)


def _child(connection: socket.socket, request: Call, fds: list[int]) -> None:
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
        code = client.run_here(request["stage"])
    except BaseException:  # what the interpreter does with an uncaught error (--debug)
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # as at the end of any interpreter (MLflow registers some)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def adopt(request: Call) -> None:
    """Take the caller's directory, environment, resource limits, CPU affinity, arguments and
    clock."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, (soft, hard) in request["limits"].items():
        with contextlib.suppress(ValueError, OSError):  # a limit above the server's own
            resource.setrlimit(getattr(resource, name), (soft, hard))
    # Before any thread starts: every thread the stage starts inherits the caller's cores.
    os.sched_setaffinity(0, request["affinity"])
    timing.restart(request["first_line"], request["startup"])
    sys.argv = [f"-m pipeline.stages.{request['stage']}", *request["argv"]]


def _die_with_caller(connection: socket.socket) -> None:
    """The caller sends nothing more: end of stream means it is gone, as a killed stage is."""
    with contextlib.suppress(OSError):
        while connection.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


# --- status and stop --------------------------------------------------------------------------


def servers() -> list[ServerInfo]:
    """The running servers: pid, package folder and socket."""
    found: list[ServerInfo] = []
    with contextlib.suppress(Unavailable):
        for info in sorted(runtime_dir().glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                written = json.loads(info.read_text())
                os.kill(int(written["pid"]), 0)  # gone: ProcessLookupError
                socket_path = str(info.with_suffix(".sock"))
                found.append(
                    {"pid": written["pid"], "package": written["package"], "socket": socket_path}
                )
    return found


def stop(which: Sequence[ServerInfo] | None = None) -> list[int]:
    """Stop these servers (all of this user's by default): each exits once its children end.
    Removing its socket retires a server; a connection made before wakes it to notice."""
    stopped = []
    for server in servers() if which is None else which:
        address = Path(server["socket"])
        wake = connect(address)
        address.unlink(missing_ok=True)
        if wake is not None:
            wake.close()
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
        raise SystemExit("usage: python -m pipeline.runtime.server status | stop")


if __name__ == "__main__":
    main()
