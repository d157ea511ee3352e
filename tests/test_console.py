"""The console: native noise held back at the file-descriptor level (every line still logged),
and a training's progress as one line."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.console import LineFilter, milestones, progress_text

# Lines as a cold `make run` printed them (TensorFlow 2.21, LiteRT, MLflow 3), from its log.
REAL_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796323286.858202    5913 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796323291.301297    5913 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1796323294.307669    5913 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; "
    "signature=input_dataset:variant> This may be expected if your graph generating binary is "
    "newer  than this binary. Unknown attributes will be ignored. NodeDef: "
    "{{node ParallelMapDatasetV2/_16}}",
    "fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8",
    "/tmp/clone/.venv/lib/python3.11/site-packages/tensorflow/lite/python/convert.py:846: "
    "UserWarning: Statistics for quantized inputs were expected, but not specified; continuing "
    "anyway.",
    "  warnings.warn(",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "2026/12/03 14:03:47 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
    "2026/12/03 14:04:17 WARNING mlflow.pyfunc: Passing a Python object as `python_model` causes "
    "it to be serialized using CloudPickle, it requires exercising caution",
]
REAL_SIGNAL = [
    "train: cnn test accuracy 0.9917 (44 epochs) -> models/cnn, MLflow run ef2214174a8d",
    # Errors of the same libraries, in the same format, that are not on the list.
    "E0000 00:00:1796323291.301297    5913 cuda_driver.cc:1] out of memory allocating 4 GiB",
    "E0000 00:00:1796323294.307669    5913 node_def_util.cc:682] NodeDef missing attribute T",
    "/tmp/x.py:3: UserWarning: something else",
    "  warnings.warn(",  # after another warning: shown
    "Traceback (most recent call last):",
]


def test_known_harmless_lines_are_held_back_and_every_other_line_shows():
    lines = LineFilter()
    assert [line for line in REAL_NOISE if lines.shows(line)] == []
    assert [line for line in REAL_SIGNAL if lines.shows(line)] == REAL_SIGNAL
    # With --verbose, everything.
    everything = LineFilter(show_all=True)
    assert all(everything.shows(line) for line in REAL_NOISE)


PLANTED = "E0000 00:00:1.0   1 planted.cc:1] a planted native error"
FILTERED = """
import ctypes, sys
from pathlib import Path
from pipeline.core.console import filtered_stderr

libc = ctypes.CDLL(None)
def native(text):  # below Python: what a C++ library's logging does
    data = (text + "\\n").encode()
    libc.write(2, data, len(data))

print("before", file=sys.stderr, flush=True)
with filtered_stderr(Path(sys.argv[1]), show_all=sys.argv[2] == "all"):
    for line in {noise!r}:
        native(line)
    native({planted!r})
    print("from python", file=sys.stderr)
    sys.stderr.write("a prompt without a newline")
    sys.stderr.flush()
print("after", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("show", ["filtered", "all"])
def test_the_descriptor_filter_logs_every_line_and_shows_all_but_the_noise(
    tmp_path: Path, show: str
):
    log = tmp_path / "logs/stage.log"
    script = FILTERED.format(noise=REAL_NOISE, planted=PLANTED)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(log), show],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = result.stderr.splitlines()
    logged = log.read_text().splitlines()
    assert logged == [*REAL_NOISE, PLANTED, "from python", "a prompt without a newline"]
    if show == "all":
        assert shown == ["before", *logged[:-1], "a prompt without a newlineafter"]
    else:
        assert shown == ["before", PLANTED, "from python", "a prompt without a newlineafter"]


def test_a_training_off_a_terminal_prints_a_line_at_each_tenth_and_where_it_stopped():
    assert milestones(80) == {8, 16, 24, 32, 40, 48, 56, 64, 72, 80}
    assert milestones(4) == {1, 2, 3, 4}
    from pipeline.ml.training import Progress

    stream = io.StringIO()
    progress = Progress("train cnn", 80, stream)
    progress.on_train_begin()
    for epoch in range(44):  # early stopping after epoch 44
        progress.on_epoch_end(epoch, {"loss": 0.5 / (epoch + 1), "val_accuracy": 0.9})
    progress.on_train_end()
    lines = stream.getvalue().splitlines()
    assert [line.split(" epoch ")[1].split()[0] for line in lines] == [
        "8/80",
        "16/80",
        "24/80",
        "32/80",
        "40/80",
        "44/80",
    ]
    assert lines[0].startswith("train cnn [##------------------] epoch 8/80 loss 0.0625")
    assert "val accuracy 0.9000" in lines[0] and lines[0].endswith(" s left")
    assert " done in " in lines[-1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_training_on_a_terminal_is_one_line_redrawn_in_place():
    from pipeline.ml.training import Progress

    stream = Terminal()
    progress = Progress("gan", 200, stream)
    progress.on_train_begin()
    for epoch in range(200):
        progress.on_epoch_end(epoch, {"d_loss": 0.6, "g_loss": 0.9})
    progress.on_train_end()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 201  # every epoch, then the final state
    assert text.rsplit("\r", 1)[1].startswith("gan [####################] epoch 200/200 done in")


def test_progress_text_estimates_the_time_left_from_the_epochs_so_far():
    text = progress_text("train fnn", 20, 80, {"loss": 0.1, "val_loss": 0.2}, elapsed_s=10.0)
    expected = "train fnn [#####---------------] epoch 20/80 loss 0.1000 val loss 0.2000"
    assert text == expected + " ~30 s left"


CRASH = """
import ctypes, os, sys
from pathlib import Path
from pipeline.core.console import filtered_stderr

with filtered_stderr(Path(sys.argv[1])):
    data = (sys.argv[2] + "\\n").encode()
    # Native writes while holding Python's lock, as C++ logging inside an op does: a flood
    # larger than the pipe must drain without Python's help.
    ctypes.PyDLL(None).write(2, data * int(sys.argv[3]), len(data) * int(sys.argv[3]))
    if sys.argv[4] == "abort":
        os.abort()  # what TensorFlow's LOG(FATAL) does after its last line
"""


def run_script(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], timeout=120, **kwargs
    )


def test_a_stages_last_lines_before_it_aborts_reach_the_console_and_the_log(tmp_path: Path):
    log = tmp_path / "stage.log"
    fatal = "F0000 00:00:1.0   1 check.cc:1] Check failed: planted"
    result = run_script(CRASH, str(log), fatal, "1", "abort", capture_output=True, text=True)
    assert result.returncode == -6  # SIGABRT
    assert fatal in result.stderr.splitlines() and log.read_text() == fatal + "\n"


def test_a_flood_of_native_output_drains_even_with_the_console_gone(tmp_path: Path):
    """4,000 lines (about 200 KB, more than a pipe holds) written under Python's lock, to a
    console whose reader has left: the stage finishes and the log has every line."""
    log = tmp_path / "stage.log"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(log), PLANTED, "4000", "no"],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    process.stderr.close()  # the console is gone: writing to it fails with EPIPE
    assert process.wait(timeout=120) == 0
    assert log.read_text().splitlines() == [PLANTED] * 4000
