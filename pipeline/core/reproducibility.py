"""The one place that decides what a stage's numbers may depend on besides code, data and params.

TensorFlow promises deterministic kernels only on the same hardware. What changes the bits from
one x86-64 machine to another (measured by benchmarks/portability.py): which kernels run (oneDNN's
or Eigen's: TensorFlow picks oneDNN by default only on processors with AVX512_VNNI, BF16 or AMX;
OpenBLAS picks its kernels by processor), the size of TensorFlow's thread pools (Eigen and oneDNN
split a reduction by the pool's size, not by the cores that run it) and the instruction set
oneDNN dispatches to at run time (AVX2, AVX-512, AMX). The kernels are chosen as the libraries
load, so for every mode in the package's `__init__` (Eigen's, and OpenBLAS's Haswell ones). In
`portable` mode the pools and the instruction set are fixed before the stage's first TensorFlow
op; `fast` leaves TensorFlow's defaults (a pool as large as the machine, the widest instruction
set).

Both settings are environment variables that TensorFlow and oneDNN read when the first op runs,
not when they are imported: so a warm server's child, whose server imported TensorFlow but ran no
op, is set up exactly as a cold process is.
"""

from __future__ import annotations

import os
from typing import Literal

Mode = Literal["portable", "fast"]
TFLiteKernels = Literal["xnnpack", "builtin"]  # LiteRT's XNNPACK delegate, or its built-in kernels

# Two threads per pool: the size CI and the measured machines have. A pool's size, not the cores
# under it, fixes the arithmetic, so one core or sixty-four give the same bits (more slowly on a
# large machine: `fast` is there for that).
PORTABLE_THREADS = 2
# The widest instruction set every supported machine has (x86-64 with AVX2 or newer).
PORTABLE_ISA = "AVX2"


def settings(mode: Mode) -> dict[str, str]:
    """The environment a stage's TensorFlow runs under in `mode`."""
    if mode == "fast":
        return {}
    threads = str(PORTABLE_THREADS)
    return {
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "ONEDNN_MAX_CPU_ISA": PORTABLE_ISA,
    }


MODE_VARIABLE = "PIPELINE_REPRODUCIBILITY"  # the mode this process runs in, once applied


def apply(mode: Mode) -> dict[str, str]:
    """Set `mode`'s environment in this process, before TensorFlow runs its first op (a value the
    caller set is replaced: in `portable` mode the machine must not show through); return it."""
    chosen = settings(mode)
    os.environ.update(chosen)
    os.environ[MODE_VARIABLE] = mode
    return chosen


def tflite_kernels() -> TFLiteKernels:
    """The LiteRT kernels that measurements bound for metrics files run on in this process's
    mode. XNNPACK picks its float kernels by processor: a float LSTM's answers differed between
    this project's AVX-512 machine and an emulated AVX2 one (benchmarks/emulated_cpu.py), while
    LiteRT's built-in kernels' agreed. So `portable` measures on the built-in kernels; `fast`,
    and a process no stage set up, on XNNPACK, as LiteRT runs a model by default."""
    return "builtin" if os.environ.get(MODE_VARIABLE) == "portable" else "xnnpack"


def tags() -> dict[str, str]:
    """What an MLflow run records of the mode that produced it: the mode, the pool size and the
    instruction-set cap TensorFlow ran with ("default" where TensorFlow chose), the LiteRT
    kernels its measurements ran on, and the kernels chosen as the libraries loaded, which no
    mode can change afterwards: whether oneDNN ran at all (TF_ENABLE_ONEDNN_OPTS) and OpenBLAS's
    (OPENBLAS_CORETYPE)."""
    return {
        "reproducibility": os.environ.get(MODE_VARIABLE, "not set"),
        "tf_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "tflite_kernels": tflite_kernels(),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "default"),
    }
