"""The reproducibility switch: what each mode fixes, checked in fresh processes where TensorFlow
and oneDNN really read it (the weights it makes identical are the golden test's, in
tests/test_pipeline_e2e.py, and benchmarks/portability.py's matrix)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from pipeline.core import reproducibility

# A fresh interpreter that imports everything a warm server imports before it forks, then starts a
# stage the way every stage starts (params loaded, the mode applied), then runs a convolution with
# oneDNN's log on: the log names the instruction set oneDNN dispatched to. Last, the kernels a
# TFLite model measured there would run on.
PROGRAM = textwrap.dedent(
    """
    import importlib, os, sys
    import pipeline
    from pipeline.runtime import server
    for module in (*server.CORE, *server.LATER):
        importlib.import_module(module)
    import tensorflow as tf
    from pipeline.core.stage import start
    start("train", None, ["--params", sys.argv[1], "--model", "cnn"], per_family=True)
    os.environ["ONEDNN_VERBOSE"] = "1"
    x = tf.ones([1, 8, 8, 4])
    tf.nn.conv2d(x, tf.ones([3, 3, 4, 8]), 1, "SAME")
    print("threads", len(os.listdir("/proc/self/task")))
    from pipeline.ml.inference import TFLiteModel
    print("tflite", TFLiteModel(b"").kernels)
    """
)


def run_stage_start(tmp_path, mode: str, caller_env: dict[str, str]) -> tuple[str, int, str]:
    import yaml

    from tests.conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["reproducibility"] = mode
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "params.yaml")],
        cwd=REPO,
        env={**os.environ, **caller_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    isa = [line for line in done.stdout.splitlines() if ",info,cpu,isa:" in line]
    threads = [line for line in done.stdout.splitlines() if line.startswith("threads ")]
    kernels = [line for line in done.stdout.splitlines() if line.startswith("tflite ")]
    assert isa and threads and kernels, done.stdout[-2000:]
    return isa[0].split("isa:")[1], int(threads[0].split()[1]), kernels[0].split()[1]


def test_portable_mode_replaces_the_callers_instruction_set_and_thread_pools(tmp_path):
    """A caller's own cap (here one below AVX2, which every machine honours) and pool sizes
    do not show through: the stage runs on AVX2 and two-thread pools all the same, and measures
    TFLite models on LiteRT's built-in kernels rather than XNNPACK's per-processor ones."""
    caller = {
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "TF_NUM_INTRAOP_THREADS": "6",
        "TF_NUM_INTEROP_THREADS": "6",
    }
    isa, threads, kernels = run_stage_start(tmp_path, "portable", caller)
    assert "AVX2" in isa or "AVX 2" in isa, isa
    fast_isa, fast_threads, fast_kernels = run_stage_start(tmp_path, "fast", caller)
    # fast leaves the process as its caller set it up: the cap and the larger pools apply.
    assert "SSE4.1" in fast_isa, fast_isa
    assert threads < fast_threads
    assert (kernels, fast_kernels) == ("builtin", "xnnpack")


@pytest.mark.parametrize("mode", ["portable", "fast"])
def test_the_mode_is_what_each_mlflow_run_records(mode: str, monkeypatch: pytest.MonkeyPatch):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TF_NUM", "ONEDNN"))}
    monkeypatch.setattr(os, "environ", environment)  # this process's TensorFlow is left alone
    reproducibility.apply(mode)  # type: ignore[arg-type]
    tags = reproducibility.tags()
    assert tags["reproducibility"] == mode
    expected = ("2", "AVX2", "builtin") if mode == "portable" else ("default", "default", "xnnpack")
    assert (tags["tf_threads"], tags["onednn_max_cpu_isa"], tags["tflite_kernels"]) == expected


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}, reason="x86-64 only")
def test_numpy_and_scipy_run_openblas_on_the_same_kernels_on_every_x86_64_processor():
    """OpenBLAS picks its kernels as it loads: SkylakeX's on an AVX-512 machine, which sum in
    another order than the Haswell ones every AVX2 machine runs. A process that imports the
    package first (every stage, the warm server) loads Haswell's, whatever this machine is."""
    from tests.conftest import REPO

    program = textwrap.dedent(
        """
        import pipeline, numpy, scipy.linalg
        from threadpoolctl import threadpool_info
        blas = {i["architecture"] for i in threadpool_info() if i["internal_api"] == "openblas"}
        print(sorted(blas))
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split("\n")[-2] == "['Haswell']", done.stdout
