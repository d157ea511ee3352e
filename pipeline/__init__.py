"""Reproducible deep-learning pipeline: one module per DVC stage plus shared parts.

Importing the package fixes the process environment before TensorFlow, MLflow or Great
Expectations can be imported by anything else. This is the only place that does it.
"""

import os

# tensorflow-model-optimization 0.8 only supports the Keras 2 API: `tf.keras` must resolve to
# tf_keras, and TensorFlow reads this variable once, on first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
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
