"""`dvc repro --force` twice from the same commit, with the default params on the embedded
digits: every metrics file and every set of model weights must come out identical. Measured
values (latency, throughput, wall time) live in reports/measured/, outside these files; keys
named after them are still left out, so that outputs of older commits compare too. Prints a
table and writes reports/benchmarks/reproducibility.json.

    python -m benchmarks.reproducibility [--project CLONE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.repro import timed
from pipeline.core.io import write_json
from tests.conftest import REPO
from tests.e2e import copy_project, weight_digest

OUTPUT = REPO / "reports/benchmarks/reproducibility.json"
MODELS = ("fnn", "cnn", "lstm")
MEASURED = ("speed", "wall_time", "latency", "throughput")  # in the keys of timed values


def without_measurements(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: without_measurements(v)
            for k, v in value.items()
            if not any(m in k for m in MEASURED)
        }
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


def fingerprint(project: Path) -> dict[str, str]:
    """A digest per metrics file (measurements removed) and per model's weights."""
    metrics = [
        "reports/validation/results.json",
        "reports/gan/metrics.json",
        "reports/baseline/svc.json",
        "reports/baseline/boosting.json",
        *(f"reports/{s}/{m}.json" for s in ("train", "compress", "evaluate") for m in MODELS),
    ]
    digests = {}
    for name in metrics:
        if not (project / name).exists():  # a stage the run did not reach
            continue
        content = without_measurements(json.loads((project / name).read_text()))
        digests[name] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    keras_files = [
        *(f"models/{m}/model.keras" for m in MODELS),
        "models/gan/generator.keras",
        *(f"models/compressed/{m}/pruned.keras" for m in MODELS),
    ]
    for name in keras_files:
        if (project / name).exists():
            digests[name] = weight_digest(project / name)
    for path in sorted((project / "models/compressed").rglob("*.tflite")):
        digests[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def differing(first: dict[str, str], second: dict[str, str]) -> list[str]:
    """The names whose digests differ between two fingerprints (or that only one holds)."""
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


def twice(project: Path) -> tuple[dict[str, str], dict[str, str], float, float]:
    first_s = timed(project, "dvc", "repro")
    first = fingerprint(project)
    second_s = timed(project, "dvc", "repro", "--force")
    return first, fingerprint(project), first_s, second_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--project", type=Path, help="a clone to run in (its outputs are replaced); default: a copy"
    )
    chosen = parser.parse_args().project
    if chosen is not None:
        first, second, first_s, second_s = twice(chosen.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-reproducibility-") as folder:
            first, second, first_s, second_s = twice(copy_project(Path(folder)))
    differ = differing(first, second)
    print(f"{'artifact':<48} identical")
    for name in sorted(first):
        print(f"{name:<48} {'no' if name in differ else 'yes'}")
    print(
        f"\n{len(first) - len(differ)} of {len(first)} identical; runs took {first_s:.0f} s, "
        f"{second_s:.0f} s"
    )
    write_json(
        OUTPUT,
        {
            "compared": sorted(first),
            "different": differ,
            "identical": not differ,
            "seconds": {"first_repro": first_s, "forced_repro": second_s},
            "left_out_of_the_comparison": sorted(MEASURED),
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
