"""What a stage shows on the console, and what it keeps in its log.

Native libraries write straight to file descriptor 2, under Python's `sys.stderr`: TensorFlow's
CUDA probe on a machine without a GPU, tf.data's notice about an attribute its runtime does not
know, the TFLite converter's settings line. None of them has a switch that silences it alone, so
a stage reads its own descriptor 2 through a pipe: every line goes to `logs/<stage>.log` (git
ignores it), and every line reaches the console except the known-harmless ones in NOISE. A line
not on that list always gets through, so a real error is never hidden. `--verbose`,
PIPELINE_VERBOSE=1 or PIPELINE_DEBUG=1 shows every line, and Keras's own per-epoch lines.

Training progress is one line per training: on a terminal a bar redrawn in place after every
epoch, elsewhere (CI, a file) a line at each tenth of the epochs.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

# Known-harmless lines, each with the line it brings after it, if any (a Python warning's
# source line). Matched against whole lines.
_ABSL = r"[IWE]\d{4} [\d:.]+ +\d+ "  # absl's prefix: level, date, time, thread
_MLFLOW = r"\d{4}/\d\d/\d\d [\d:]+ "  # MLflow's logging prefix: date, time
_KNOWN: tuple[tuple[str, str | None], ...] = (
    # absl, before TensorFlow sets its logging up; said once per process.
    (
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
        r"STDERR",
        None,
    ),
    # TensorFlow's GPU probe on a machine without one: an "E" line, and no error.
    (
        _ABSL + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will "
        r"not be used\.",
        None,
    ),
    (_ABSL + r"cuda_platform\.cc:\d+\] failed call to cuInit: .*", None),
    # tf.data's graph carries an attribute this TensorFlow's runtime ignores.
    (
        _ABSL + r"node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool .*",
        None,
    ),
    # The TFLite converter's settings, its note on the int8 conversion's inputs, LiteRT's CPU.
    (
        r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
        r"output_inference_type: \w+",
        None,
    ),
    (
        r".*/tensorflow/lite/python/convert\.py:\d+: UserWarning: Statistics for quantized "
        r"inputs were expected, but not specified; continuing anyway\.",
        "  warnings.warn(",
    ),
    (r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.", None),
    # MLflow: a new SQLite store, and its notes on logging a pyfunc model from an object.
    (
        _MLFLOW + r"INFO mlflow\.store\.db\.utils: (Creating initial MLflow database "
        r"tables\.\.\.|Updating database tables)",
        None,
    ),
    (
        _MLFLOW + r"WARNING mlflow\.pyfunc: Passing a Python object as `python_model` causes "
        r"it to be serialized using CloudPickle.*",
        None,
    ),
    (_MLFLOW + r"INFO mlflow\.pyfunc: Validating input example against model signature", None),
    (
        r".*/mlflow/pyfunc/__init__\.py:\d+: UserWarning: Failed to infer signature from "
        r"type hint: .*",
        "  signature_from_type_hints = _infer_signature_from_type_hints(",
    ),
)
NOISE = tuple((re.compile(pattern), then) for pattern, then in _KNOWN)


def verbose(argv: Sequence[str] | None = None) -> bool:
    """Every line and Keras's per-epoch output: --verbose, PIPELINE_VERBOSE or PIPELINE_DEBUG."""
    argv = sys.argv[1:] if argv is None else argv
    return (
        "--verbose" in argv
        or "--debug" in argv
        or any(
            os.environ.get(v, "") not in ("", "0") for v in ("PIPELINE_VERBOSE", "PIPELINE_DEBUG")
        )
    )


class LineFilter:
    """Decides line by line what reaches the console: not NOISE, nor the line NOISE says
    follows one of its lines."""

    def __init__(self, show_all: bool = False) -> None:
        self.show_all = show_all
        self.expected: str | None = None  # the line the last noise line brings after it

    def shows(self, line: str) -> bool:
        follows, self.expected = self.expected, None
        if self.show_all:
            return True
        if follows is not None and line == follows:
            return False
        for pattern, then in NOISE:
            if pattern.fullmatch(line):
                self.expected = then
                return False
        return True


def log_file(stage: str, argv: Sequence[str]) -> Path:
    """logs/<stage>.log, `train --model cnn` as logs/train_cnn.log."""
    from pipeline.core.layout import LOGS_DIR

    name = stage
    if "--model" in argv and argv.index("--model") + 1 < len(argv):
        name = f"{stage}_{argv[argv.index('--model') + 1]}"
    return LOGS_DIR / f"{name}.log"


END = b"\0pipeline console: end\0"  # what the stage writes last into the pipe


class _Sink:
    """A descriptor the pump writes to until the first failure (a console gone, a full disk):
    then it stops writing there and goes on with the other, never stopping reading."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def write(self, data: bytes) -> None:
        try:
            while data and self.fd is not None:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.fd = None


def pump(source: int, console: int, log: int, show_all: bool) -> None:
    """Copy `source` to `log`, and what LineFilter shows to `console`, until END or end of file.
    A line still unfinished when nothing more comes for a moment (a prompt) is shown as it is."""
    lines, shown, kept = LineFilter(show_all), _Sink(console), _Sink(log)
    pending = b""
    while True:
        chunk = os.read(source, 65536)
        pending += chunk
        finished = not chunk or END in pending
        if END in pending:  # what a child process still holding the pipe writes later is dropped
            pending = pending[: pending.index(END)]
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            kept.write(raw + b"\n")
            if lines.shows(raw.decode("utf-8", "replace")):
                shown.write(raw + b"\n")
        if pending and (finished or not select.select([source], [], [], 0.05)[0]):
            kept.write(pending)
            shown.write(pending)
            pending = b""
        if finished:
            return


@contextlib.contextmanager
def filtered_stderr(log_path: Path, show_all: bool = False) -> Iterator[None]:
    """Descriptor 2 (Python's `sys.stderr` and every native library's) through a pipe for the
    block's duration: all to `log_path`, the console without NOISE (everything with
    `show_all`). The pipe's reader is a process of its own (`python -m pipeline.core.console`),
    so what a stage writes just before it crashes still arrives, and native code writing while it
    holds Python's lock cannot block on a reader that needs that lock. Where the log or the pump
    cannot be set up, the block runs unfiltered, after one line saying why."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as error:
        print(f"console: {log_path}: {error.strerror}; output not filtered", file=sys.stderr)
        yield
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    try:
        # Interrupts are for the stage: the pump, which inherits this mask, drains to the end.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            reader = subprocess.Popen(
                [sys.executable, "-m", "pipeline.core.console", str(log), str(int(show_all))],
                stdin=read_end,
                stdout=2,  # the console, as descriptor 2 is until the stage's is replaced
                pass_fds=(log,),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except OSError as error:
        print(f"console: cannot start the filter ({error}); output not filtered", file=sys.stderr)
        reader = None
    finally:
        os.close(read_end)
        os.close(log)
    if reader is None:
        os.close(write_end)
        yield
        return
    console = os.dup(2)
    os.dup2(write_end, 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(console, 2)  # from here on, the stage writes to the console directly
        os.close(console)
        # A child process may still hold the pipe: the end mark, not end of file, ends the pump;
        # never waiting on a full pipe whose reader died.
        os.set_blocking(write_end, False)
        with contextlib.suppress(OSError):
            os.write(write_end, END)
        os.close(write_end)
        try:
            reader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            reader.kill()


def milestones(epochs: int) -> set[int]:
    """The epochs (1-based) after which a non-interactive training prints its line: each tenth
    of `epochs`, and the last."""
    return {math.ceil(epochs * tenth / 10) for tenth in range(1, 11)}


def progress_text(
    label: str,
    epoch: int,
    epochs: int,
    logs: dict[str, float],
    elapsed_s: float,
    done: bool = False,
    width: int = 20,
    timed: int | None = None,
) -> str:
    """`train cnn [######--------------] epoch 24/80 loss 0.0213 val accuracy 0.9944 ~42 s
    left` (at most: early stopping may end it sooner); `done`: the seconds it took instead.
    `timed`: the epochs `elapsed_s` covers, where fewer than `epoch` (a resumed training)."""
    filled = round(width * epoch / epochs)
    per_epoch = elapsed_s / (timed if timed else epoch) if epoch else 0.0
    left = per_epoch * (epochs - epoch)
    parts = [f"{label} [{'#' * filled}{'-' * (width - filled)}] epoch {epoch}/{epochs}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    for key, name in (("val_accuracy", "val accuracy"), ("val_loss", "val loss")):
        if key in logs:
            parts.append(f"{name} {logs[key]:.4f}")
            break
    parts.append(f"done in {elapsed_s:.0f} s" if done else f"~{left:.0f} s left")
    return " ".join(parts)


if __name__ == "__main__":  # the pump filtered_stderr starts: stdin the pipe, stdout the console
    pump(0, 1, int(sys.argv[1]), sys.argv[2] == "1")
