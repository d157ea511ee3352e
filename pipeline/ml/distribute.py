"""Where training runs: one device, several devices of this machine, or several machines.

`train.common.distribute` picks a tf.distribute strategy: `none` (TensorFlow's default device),
`mirrored` (MirroredStrategy: every GPU of this machine, or its CPU) or `multi_worker`
(MultiWorkerMirroredStrategy over the machines listed in `TF_CONFIG`). `batch_size` is per
replica: the global batch grows with the replicas, as the tf.distribute guides recommend.

Who is the chief is read from `TF_CONFIG` without TensorFlow, so that a worker knows before
any import that it must not write outputs or log runs: the chief alone does.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.core.cli import PipelineError


def cluster_task(kind: str) -> tuple[str, int, int]:
    """(task type, index, number of workers) of this process; ("chief", 0, 1) unless
    multi_worker."""
    if kind != "multi_worker":
        return "chief", 0, 1
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise PipelineError(
            "train.common.distribute: multi_worker needs TF_CONFIG (the cluster and this "
            "process's task) in the environment"
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        size = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PipelineError(
            'TF_CONFIG: expected {"cluster": {"worker": [...]}, "task": {"type": ..., '
            '"index": ...}}'
        ) from None
    if task_type not in cluster or index >= len(cluster[task_type]):
        raise PipelineError(f"TF_CONFIG: task {task_type}:{index} is not in the cluster")
    return task_type, index, size


def is_chief(kind: str) -> bool:
    """The process that writes outputs and logs: the `chief` task, else worker 0."""
    task_type, index, _ = cluster_task(kind)
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
    return task_type == "worker" and index == 0 and "chief" not in cluster


def make_strategy(kind: str) -> Any:
    """The tf.distribute strategy for `kind`. Create it before any other TensorFlow op:
    MultiWorkerMirroredStrategy configures the runtime's collectives when it starts."""
    import tensorflow as tf

    if kind == "mirrored":
        # Every GPU; without one, every logical CPU device (one, unless configured otherwise).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if kind == "multi_worker":
        cluster_task(kind)  # a clear error for a missing or malformed TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()  # the default: this process's first device
