"""Where `dvc repro` spends its time, against the floor of model compute. In one invocation, in a
fresh copy of the project (no outputs, empty DVC cache, empty MLflow store):

1. a cold `dvc repro`, each stage's wall time taken from DVC's own output as it streams;
2. a no-op `dvc repro` (best of three);
3. a `dvc repro` after changing one evaluate param: only evaluate@* and report may rerun;
4. `benchmarks.floor`: plain Keras training and scoring of the same three classifiers.

Each stage's split (start-up, imports, data, compute, logging, outputs) comes from its
reports/measured/timing/<stage>.json. Prints a table and writes reports/benchmarks.json.

    python -m benchmarks.pipeline
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core import layout
from pipeline.core.io import write_json
from pipeline.core.timing import PHASES
from tests.conftest import REPO
from tests.e2e import copy_project, update_params

OUTPUT = REPO / "reports/benchmarks.json"
TARGETS = {
    "train_over_floor": 1.3,  # the train stages' wall time over the plain-Keras floor
    "non_compute_fraction": 0.25,  # of the cold `dvc repro` wall time
    "noop_repro_s": 2.0,
}
CHANGED_PARAM = {"evaluate": {"calibration_bins": 10}}
EXPECTED_RERUN = ["evaluate@fnn", "evaluate@cnn", "evaluate@lstm", "report"]
WITHOUT_TENSORFLOW = ["ingest", "validate", "report"]
_STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "PIPELINE_DEBUG"):
        env.pop(key, None)
    return env


def repro(project: Path) -> tuple[float, dict[str, float]]:
    """`dvc repro` wall time, and each stage's wall time from its 'Running stage' line to the
    next one (or the end): the stage's process plus DVC's caching of its outputs."""
    starts: list[tuple[str, float]] = []
    output: list[str] = []
    begin = time.perf_counter()
    with subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if found := _STAGE_LINE.match(line):
                starts.append((found.group(1), time.perf_counter()))
    end = time.perf_counter()
    if process.returncode != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(output)[-4000:])
    bounds = [t for _, t in starts[1:]] + [end]
    walls = {stage: stop - start for (stage, start), stop in zip(starts, bounds, strict=True)}
    return end - begin, walls


def timed(project: Path, *command: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        list(command), cwd=project, env=environment(), capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def stage_timings(project: Path) -> dict[str, dict[str, Any]]:
    return {
        figures["stage"]: figures
        for figures in (
            json.loads(p.read_text()) for p in (project / layout.TIMING_DIR).glob("*.json")
        )
    }


def measure(project: Path) -> dict[str, Any]:
    cold_wall, stage_walls = repro(project)
    timings = stage_timings(project)
    accuracy = {
        name: json.loads((project / f"reports/train/{name}.json").read_text())["test_accuracy"]
        for name in ("fnn", "cnn", "lstm")
    }
    noop = min(timed(project, "dvc", "repro")[0] for _ in range(3))
    update_params(project, CHANGED_PARAM)
    changed_wall, changed_walls = repro(project)
    floor_wall, floor_out = timed(project, sys.executable, "-m", "benchmarks.floor")
    floor = json.loads(floor_out.strip().splitlines()[-1])

    phases = {p: sum(t["seconds"][p] for t in timings.values()) for p in (*PHASES, "other")}
    compute = phases["compute"]
    train_wall = sum(w for s, w in stage_walls.items() if s.startswith("train@"))
    return {
        "cold_repro_s": cold_wall,
        "stage_wall_s": stage_walls,
        "stage_split_s": {s: t["seconds"] for s, t in sorted(timings.items())},
        "phase_totals_s": phases,
        # DVC's own share: its start-up, hashing and caching, outside any stage's process.
        "dvc_overhead_s": cold_wall - sum(t["total_s"] for t in timings.values()),
        "model_compute_s": compute,
        "non_compute_fraction": 1.0 - compute / cold_wall,
        "noop_repro_s": noop,
        "changed_param": CHANGED_PARAM,
        "changed_param_repro_s": changed_wall,
        "changed_param_reran": sorted(changed_walls),
        "train_stages_s": train_wall,
        "floor_s": floor_wall,
        "floor": floor,
        "train_over_floor": train_wall / floor_wall,
        "test_accuracy": accuracy,
        "tensorflow_imported": {s: timings[s]["tensorflow_imported"] for s in WITHOUT_TENSORFLOW},
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {
        "train_over_floor": result["train_over_floor"] <= TARGETS["train_over_floor"],
        "non_compute_fraction": result["non_compute_fraction"] <= TARGETS["non_compute_fraction"],
        "noop_repro_s": result["noop_repro_s"] < TARGETS["noop_repro_s"],
        "only_dependants_rerun": result["changed_param_reran"] == sorted(EXPECTED_RERUN),
        "no_tensorflow_where_unneeded": not any(result["tensorflow_imported"].values()),
        "floor_matches_pipeline": all(
            result["floor"][m]["test_accuracy"] == a for m, a in result["test_accuracy"].items()
        ),
    }


def print_table(result: dict[str, Any], ok: dict[str, bool]) -> None:
    print(f"{'stage':<16}" + "".join(f"{p:>9}" for p in (*PHASES, "other")) + f"{'wall':>9}")
    for stage, split in result["stage_split_s"].items():
        wall = result["stage_wall_s"].get(stage, float("nan"))
        cells = "".join(f"{split[p]:9.2f}" for p in (*PHASES, "other"))
        print(f"{stage:<16}{cells}{wall:9.2f}")
    totals = result["phase_totals_s"]
    print(f"{'all stages':<16}" + "".join(f"{v:9.2f}" for v in totals.values()))
    print(f"DVC outside the stages: {result['dvc_overhead_s']:.2f} s")
    rows = [
        ("cold dvc repro (s)", result["cold_repro_s"], None),
        ("model compute (s)", result["model_compute_s"], None),
        ("non-compute share", result["non_compute_fraction"], "non_compute_fraction"),
        ("train stages (s)", result["train_stages_s"], None),
        ("plain-Keras floor (s)", result["floor_s"], None),
        ("train / floor", result["train_over_floor"], "train_over_floor"),
        ("no-op dvc repro (s)", result["noop_repro_s"], "noop_repro_s"),
        ("evaluate param change (s)", result["changed_param_repro_s"], "only_dependants_rerun"),
    ]
    print(f"\n{'measure':<28}{'value':>10}{'target':>9}  ok")
    for label, value, key in rows:
        target = TARGETS.get(key or "", "")
        verdict = "" if key is None else ("yes" if ok[key] else "NO")
        print(f"{label:<28}{value:10.3f}{target!s:>9}  {verdict}")
    print(f"reran after the param change: {', '.join(result['changed_param_reran'])}")
    for key in ("no_tensorflow_where_unneeded", "floor_matches_pipeline"):
        print(f"{key}: {'yes' if ok[key] else 'NO'}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        result = measure(copy_project(Path(folder)))
    ok = verdicts(result)
    print_table(result, ok)
    write_json(
        OUTPUT,
        {
            **result,
            "targets": TARGETS,
            "met": ok,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")
    sys.exit(0 if all(ok.values()) else 1)


if __name__ == "__main__":
    main()
