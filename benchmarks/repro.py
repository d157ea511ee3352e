"""Wall time of `dvc repro` from empty outputs (fresh copy, empty DVC cache) and of a no-op
`dvc repro`, with default params on the embedded digits. Prints a table and writes
reports/benchmarks/repro.json.

The 4-minute target is the foundation's (ingest, validate, three classifiers): it is timed first
(`dvc repro train`), then the rest of the DAG (GAN, compression), then a no-op run.

    python -m benchmarks.repro
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from pipeline.core.io import write_json
from tests.conftest import REPO
from tests.e2e import copy_project, run

OUTPUT = REPO / "reports/benchmarks/repro.json"
TARGETS_S = {"cold_foundation": 240.0, "cold_rest_of_dag": None, "noop_repro": 3.0}


def timed(project: Path, *command: str, timeout: int = 1800) -> float:
    start = time.perf_counter()
    result = run(project, *command, timeout=timeout)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as folder:
        project = copy_project(Path(folder))
        foundation = timed(project, "dvc", "repro", "train")
        rest = timed(project, "dvc", "repro")
        noop = min(timed(project, "dvc", "repro") for _ in range(3))
        accuracy = {
            name: json.loads((project / f"reports/train/{name}.json").read_text())["test_accuracy"]
            for name in ("fnn", "cnn", "lstm")
        }
    times = {"cold_foundation": foundation, "cold_rest_of_dag": rest, "noop_repro": noop}
    print(f"{'measure':<18} {'seconds':>9} {'target':>8}  ok")
    for key, seconds in times.items():
        target = TARGETS_S[key]
        verdict = "-" if target is None else ("yes" if seconds < target else "NO")
        shown = "-" if target is None else f"{target:.0f}"
        print(f"{key:<18} {seconds:9.2f} {shown:>8}  {verdict}")
    print("test accuracy:", ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    write_json(
        OUTPUT,
        {
            "seconds": times,
            "targets_seconds": TARGETS_S,
            "test_accuracy": accuracy,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
