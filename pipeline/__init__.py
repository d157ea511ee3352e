"""Reproducible deep-learning pipeline: one module per DVC stage plus shared parts.

Importing the package fixes the process environment before TensorFlow, MLflow or Great
Expectations can be imported by anything else. This is the only place that does it.
"""

import os
import platform

# tensorflow-model-optimization 0.8 only supports the Keras 2 API: `tf.keras` must resolve to
# tf_keras, and TensorFlow reads this variable once, on first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow turns oneDNN's kernels on by default only where the processor has AVX512_VNNI,
# AVX512_BF16 or AMX, and runs Eigen's elsewhere: the two give different bits, so the same
# params trained other weights on such a machine. Eigen's everywhere; read once, as TensorFlow
# loads, so it is set here (a caller's own value stays, and each MLflow run records it).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# NumPy's and SciPy's OpenBLAS choose their kernels by processor too: SkylakeX's on AVX-512
# machines, Haswell's on AVX2 ones (Intel's and AMD's alike). The two sum in other orders, so the
# SVC baseline fitted other bits. Haswell's everywhere (AVX2, which every supported x86-64
# machine has); OpenBLAS reads this as it loads, so before anything imports NumPy.
if platform.machine().lower() in {"x86_64", "amd64"}:
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
# Nothing may reach the network at run time: switch off every library's telemetry.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# TensorFlow's C++ start-up chatter (CPU feature notices) hides the stage's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Marks the first line of the pipeline's own code, for each stage's time split.
from pipeline.core import timing as _timing  # noqa: F401

__all__: list[str] = []
