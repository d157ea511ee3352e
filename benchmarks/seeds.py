"""Every target and headline figure the project reports, over three seeds: the whole DAG with the
default params on the embedded digits, run with `seed` 42, 43 and 44, each in a clean copy of
the project. The seed picks the split, the initial weights, the batch order and every random
draw. For each figure: the mean, min, max and spread (max - min); a target counts as met when its
mean meets the mean of its bounds (a deletion-AUC bound is that run's random deletion). Prints a
table and writes reports/benchmarks/seeds.json.

    python -m benchmarks.seeds [--seeds 42 43 44] [--reuse 42=PATH]

`--reuse SEED=PATH` reads that seed's outputs from a project that has run `dvc repro` with it
(a fresh clone after `make run`, for seed 42) instead of running it again.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout
from pipeline.core.io import write_json
from pipeline.core.outputs import (
    BaselineReport,
    Check,
    CompressReport,
    EnsembleReport,
    EvaluateReport,
    GanMetrics,
    TrainMetrics,
)
from pipeline.core.params import load_params
from pipeline.core.provenance import processor
from tests.conftest import REPO
from tests.e2e import commit, copy_project, run, update_params

OUTPUT = REPO / "reports/benchmarks/seeds.json"
SEEDS = (42, 43, 44)
# Check names whose bound is a ceiling; every other check's bound is a floor.
CEILINGS = ("loss_points", "error", "below_random")
SIGNS = {"at most": "≤", "at least": "≥"}


def figures(project: Path) -> tuple[dict[str, float], dict[str, Check]]:
    """A finished project's headline figures, and its targets (name -> check)."""
    params = load_params(project / "params.yaml").evaluate
    robust = f"{params.robust_epsilon:g}"
    values: dict[str, float] = {}
    checks: dict[str, Check] = {}
    for name in layout.MODEL_NAMES:
        values[f"{name}.test_accuracy"] = TrainMetrics.read(
            project / layout.train_metrics(name)
        ).test_accuracy
        evaluated = EvaluateReport.read(project / layout.evaluate_report(name))
        values[f"{name}.pgd_accuracy_eps_{robust}"] = evaluated.adversarial.robust_accuracy
        for corruption in ("shift", "rotation"):
            for severity, accuracy in evaluated.corruptions[corruption].items():
                values[f"{name}.{corruption}_{severity}_accuracy"] = accuracy
        compressed = CompressReport.read(project / layout.compress_report(name))
        checks |= {f"{name}.compress.{k}": c for k, c in compressed.targets.items()}
        checks |= {f"{name}.evaluate.{k}": c for k, c in evaluated.targets.items()}
    ensemble = EnsembleReport.read(project / layout.ENSEMBLE_REPORT)
    values["ensemble.test_accuracy"] = ensemble.clean.accuracy
    checks |= {f"ensemble.{k}": c for k, c in ensemble.targets.items()}
    for name in layout.BASELINE_NAMES:
        report = BaselineReport.read(project / layout.baseline_report(name))
        values[f"{name}.test_accuracy"] = report.test_accuracy
    gan = GanMetrics.read(project / layout.GAN_METRICS)
    values["gan.classifier_agreement"] = gan.classifier_agreement
    values["gan.frechet_distance"] = gan.frechet_distance
    return values, checks


def spread(values: list[float]) -> dict[str, float]:
    array = np.array(values, dtype=float)
    low, high = float(array.min()), float(array.max())
    return {"mean": float(array.mean()), "min": low, "max": high, "spread": high - low}


def summarize(runs: dict[int, tuple[dict[str, float], dict[str, Check]]]) -> dict[str, Any]:
    """Each figure's and each target's spread over the seeds; a target's verdict by its mean."""
    seeds = sorted(runs)
    values = {
        key: {**spread([runs[s][0][key] for s in seeds]), "runs": [runs[s][0][key] for s in seeds]}
        for key in runs[seeds[0]][0]
    }
    targets: dict[str, dict[str, Any]] = {}
    for key in runs[seeds[0]][1]:
        present = [runs[s][1][key] for s in seeds if key in runs[s][1]]
        measured = [c.value for c in present if c.value is not None]
        if len(measured) != len(seeds):
            targets[key] = {"measured_in": len(measured), "met_by_mean": False}
            continue
        ceiling = any(part in key for part in CEILINGS)
        mean, bound = float(np.mean(measured)), float(np.mean([c.bound for c in present]))
        targets[key] = {
            **spread(measured),
            "bound": bound,
            "kind": "at most" if ceiling else "at least",
            "met_by_mean": mean <= bound if ceiling else mean >= bound,
            "met_in_runs": [c.met for c in present],
        }
    return {"values": values, "targets": targets}


def table(summary: dict[str, Any]) -> str:
    lines = [f"{'figure':<62}{'mean':>9}{'spread':>9}{'min':>9}{'max':>9}"]
    for key, v in summary["values"].items():
        lines.append(
            f"{key:<62}{v['mean']:>9.4f}{v['spread']:>9.4f}{v['min']:>9.4f}{v['max']:>9.4f}"
        )
    lines.append("")
    lines.append(f"{'target':<62}{'mean':>9}{'spread':>9}{'bound':>12}  met (mean; runs)")
    for key, t in summary["targets"].items():
        if "mean" not in t:
            lines.append(f"{key:<62}{'not measured in every run':>30}")
            continue
        runs = "".join("y" if met else "n" for met in t["met_in_runs"])
        lines.append(
            f"{key:<62}{t['mean']:>9.4f}{t['spread']:>9.4f}{SIGNS[t['kind']]:>3}{t['bound']:>9.4f}"
            f"  {'yes' if t['met_by_mean'] else 'NO'} ({runs})"
        )
    return "\n".join(lines)


def run_seed(seed: int, folder: Path) -> tuple[Path, float]:
    project = copy_project(folder / f"seed-{seed}")
    update_params(project, {"seed": seed})
    commit(project, f"seed {seed}")
    started = time.perf_counter()
    result = run(project, "dvc", "repro", timeout=7200)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed}: dvc repro failed:\n{result.stderr[-3000:]}")
    return project, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--reuse", nargs="*", default=[], help="SEED=PATH of a finished run")
    args = parser.parse_args()
    reused = {int(seed): Path(path) for seed, path in (item.split("=", 1) for item in args.reuse)}
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as folder:
        for seed in args.seeds:
            if seed in reused:
                found = load_params(reused[seed] / "params.yaml").seed
                if found != seed:
                    raise SystemExit(f"{reused[seed]}: params.yaml has seed {found}, not {seed}")
                runs[seed] = figures(reused[seed])
                continue
            project, seconds[seed] = run_seed(seed, Path(folder))
            runs[seed] = figures(project)
            print(f"seed {seed}: dvc repro took {seconds[seed]:.0f} s", flush=True)
    summary = summarize(runs)
    print(table(summary))
    write_json(
        OUTPUT,
        {
            "machine": {**processor(), "python": platform.python_version()},
            "seeds": sorted(runs),
            "reused": {str(seed): str(path) for seed, path in reused.items()},
            "repro_seconds": seconds,
            **summary,
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
