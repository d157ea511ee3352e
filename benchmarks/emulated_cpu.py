"""The portable mode on a processor without AVX-512, emulated on this one. The end-to-end tests'
tiny run (tests/e2e.py's params; the baselines, every family's training, the GAN and every
compression) runs twice in cold processes: natively, and with its training, GAN and compression
commands under QEMU's user-mode emulation of a Haswell (`qemu-x86_64 -cpu Haswell`: the processor
then reports AVX2 and FMA3 but no AVX-512, so oneDNN, XNNPACK and every other library that picks
its kernels at run time take an AVX2-only machine's paths). Both runs are compared output by
output (benchmarks.reproducibility's fingerprint: weights, TFLite files, metrics), both with the
golden digests (tests/golden_digests.json), and so are the answers each TFLite file gives on the
test images through LiteRT, with its XNNPACK delegate and with its built-in kernels, and those of
a few of TensorFlow's elementwise kernels, natively and emulated. Prints a table and writes
reports/benchmarks/emulated_cpu.json.

    python -m benchmarks.emulated_cpu [--cpu Haswell]

Needs Debian's qemu-user (`apt-get install qemu-user`). ingest, validate and baseline run
natively in both: under the emulator, Great Expectations' and scikit-learn's processes die of a
segmentation fault. QEMU computes floating point in software, to IEEE 754, and so answers the
processor's approximate reciprocal instructions (RCPPS, RSQRTPS) more exactly than any real
processor's table does: where the emulated run differs, `elementwise_answers` says whether that
can be why. A machine with that processor remains the last word.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.reproducibility import differing, fingerprint
from pipeline.core.io import write_json
from pipeline.core.provenance import processor
from tests.conftest import REPO
from tests.e2e import GOLDEN, TINY_PARAMS, commit, copy_project, golden_digests, run, update_params

OUTPUT = REPO / "reports/benchmarks/emulated_cpu.json"
EMULATOR = "qemu-x86_64"
NATIVE_STAGES = ["baseline"]  # with ingest and validate, upstream of it
STAGES = ["train", "gan", "compress"]


def tflite_answers(project: Path) -> dict[str, str]:
    """ "<file> <kernels>" -> a digest of the probabilities that TFLite file gives the test images
    through LiteRT, as evaluate runs it (pipeline.ml.inference), or the error it raised."""
    import numpy as np

    from pipeline.data.prepared import load_prepared
    from pipeline.ml.inference import TFLiteModel

    x, _ = load_prepared(project / "data/prepared")["test"]
    answers = {}
    for path in sorted((project / "models/compressed").rglob("*.tflite")):
        for kernels in ("xnnpack", "builtin"):
            name = f"{path.relative_to(project)} {kernels}"
            model = TFLiteModel(path.read_bytes(), kernels=kernels)
            try:
                probabilities = model.predict(x)
            except (RuntimeError, ValueError) as error:  # as compress, which reports it
                answers[name] = f"error: {str(error).splitlines()[0]}"
                continue
            # A model XNNPACK cannot prepare falls back to the built-in kernels: say so.
            ran = "" if model.kernels == kernels else f" ({model.kernels})"
            answers[name] = (
                hashlib.sha256(np.ascontiguousarray(probabilities).tobytes()).hexdigest() + ran
            )
    return answers


def elementwise_answers() -> dict[str, str]:
    """op -> a digest of what TensorFlow's kernel answers for 100,003 floats in [0.01, 100],
    and, for the two ops whose kernels start from the processor's 12-bit approximate reciprocal
    and reciprocal square root (RCPPS, RSQRTPS), the largest distance in units in the last place
    from the correctly rounded answer: where an emulated run's weights differ, these say
    whether the emulator's approximations, which no real processor's table matches, can explain
    it."""
    import numpy as np
    import tensorflow as tf

    x = np.linspace(0.01, 100, 100_003, dtype=np.float32)
    exact = {
        "rsqrt": (1 / np.sqrt(x.astype(np.float64))).astype(np.float32),
        "reciprocal": (1 / x.astype(np.float64)).astype(np.float32),
    }
    answers = {}
    for name in ("rsqrt", "reciprocal", "sqrt", "exp", "tanh", "sigmoid"):
        y = getattr(tf.math, name)(x).numpy()
        answers[name] = hashlib.sha256(y.tobytes()).hexdigest()
        if name in exact:
            ulps = np.abs(y.view(np.int32).astype(np.int64) - exact[name].view(np.int32))
            answers[f"{name} ulps from exact (max)"] = str(int(ulps.max()))
    return answers


def emulated_python(folder: Path, cpu: str) -> Path:
    """A folder whose `python` is this environment's, run under the emulated processor: first
    on the PATH, it is what the stage commands in dvc.yaml call."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    command = shlex.join([EMULATOR, "-cpu", cpu, sys.executable])
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    return folder


@dataclass
class Run:
    seconds: float  # of the emulated stages' dvc repro (natively: the same stages)
    outputs: dict[str, str]  # benchmarks.reproducibility's fingerprint
    tflite_answers: dict[str, str]  # tflite_answers, computed under the same python
    elementwise_answers: dict[str, str]  # likewise
    differ_from_golden: list[str]


def one_run(project: Path, python_folder: Path | None, golden: dict[str, str]) -> Run:
    """The tiny run in `project`, cold, with `python_folder`'s python (if any) for STAGES."""
    update_params(project, TINY_PARAMS)
    commit(project, "tiny params")
    # Cold: a warm server would run the stages in its own process, started outside the emulator.
    cold = ["env", "PIPELINE_WARM=0"]
    native = run(project, *cold, "dvc", "repro", *NATIVE_STAGES, timeout=3600)
    if native.returncode != 0:
        raise SystemExit(f"emulated_cpu: dvc repro {NATIVE_STAGES} failed:\n{native.stderr}")
    environment = list(cold)
    if python_folder is not None:
        tools = Path(sys.executable).parent  # DVC's, first on the PATH as tests.e2e.run puts them
        environment.append(f"PATH={python_folder}:{tools}:{os.environ['PATH']}")
    started = time.perf_counter()
    done = run(project, *environment, "dvc", "repro", *STAGES, timeout=6 * 3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"emulated_cpu: dvc repro {STAGES} failed:\n{done.stderr[-3000:]}")
    python = str(python_folder / "python") if python_folder else sys.executable

    def answers(*helper: str) -> dict[str, str]:
        command = [python, "-m", "benchmarks.emulated_cpu", *helper]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"emulated_cpu: {shlex.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.splitlines()[-1])

    return Run(
        seconds=round(seconds, 1),
        outputs=fingerprint(project),
        tflite_answers=answers("--answers", str(project)),
        elementwise_answers=answers("--elementwise"),
        differ_from_golden=differing(golden_digests(project), golden),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", default="Haswell", help="QEMU's processor model to emulate")
    # What the helper processes, native or emulated, print.
    parser.add_argument("--answers", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--elementwise", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.answers or args.elementwise:
        print(json.dumps(tflite_answers(args.answers) if args.answers else elementwise_answers()))
        return
    if shutil.which(EMULATOR) is None:
        raise SystemExit(f"emulated_cpu: no {EMULATOR} here: install Debian's qemu-user")
    golden = json.loads(GOLDEN.read_text())["digests"]
    emulated_name = f"emulated {args.cpu}"
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="bench-emulated-") as folder:
        for name, python_folder in (
            ("native", None),
            (emulated_name, emulated_python(Path(folder, "bin"), args.cpu)),
        ):
            project = copy_project(Path(folder, name.replace(" ", "-")))
            runs[name] = result = one_run(project, python_folder, golden)
            equal = len(golden) - len(result.differ_from_golden)
            print(
                f"{name:<18} {result.seconds:7.0f} s  {equal} of {len(golden)} golden digests equal"
            )
    native, emulated = runs["native"], runs[emulated_name]
    outputs_differ = differing(native.outputs, emulated.outputs)
    answers_differ = differing(native.tflite_answers, emulated.tflite_answers)
    print(
        f"outputs identical: {len(native.outputs) - len(outputs_differ)} of {len(native.outputs)}"
        + (f" (differ: {', '.join(outputs_differ)})" if outputs_differ else "")
    )
    elementwise_differ = differing(native.elementwise_answers, emulated.elementwise_answers)
    print(f"{'TFLite file, kernels / TensorFlow op':<48} answers, native vs emulated")
    native_answers = {**native.tflite_answers, **native.elementwise_answers}
    emulated_answers = {**emulated.tflite_answers, **emulated.elementwise_answers}
    for name, answer in native_answers.items():
        same = "DIFFER" if name in answers_differ + elementwise_differ else "identical"
        print(f"{name:<48} {same:<9}  {answer[:16]:<16}  {emulated_answers.get(name, '')[:16]}")
    version = subprocess.run([EMULATOR, "--version"], capture_output=True, text=True).stdout
    write_json(
        OUTPUT,
        {
            "params": "tests/e2e.py's TINY_PARAMS; the rest as params.yaml (portable mode)",
            "emulated_cpu": args.cpu,
            "emulator": version.splitlines()[0],
            "runs": {name: asdict(result) for name, result in runs.items()},
            "outputs_differ": outputs_differ,
            "tflite_answers_differ": answers_differ,
            "elementwise_answers_differ": elementwise_differ,
            "machine": {**processor(), "python": platform.python_version()},
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
