"""The portability matrix: the same commit and params under {1 core, 2 cores} × {oneDNN capped at
AVX2, capped at AVX-512, uncapped} × {warm server, cold processes}, in each reproducibility mode.
Every combination runs `dvc repro --force` of the training, GAN and compression stages in one
copy of the project (the e2e tests' tiny params: every family, every int8 file, in minutes) and
is compared with the first: each model's weights, every TFLite file's bytes and every metrics
file with its measured speed left out. Prints the matrix and writes
reports/benchmarks/portability.json.

    python -m benchmarks.portability [--modes portable fast] [--stages train gan compress]

The instruction-set rows emulate other processors on this one: a cap at or above what this
processor has dispatches as uncapped, so on an AVX2-only machine the three caps are one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.reproducibility import differing, fingerprint
from pipeline.core.io import write_json
from pipeline.core.provenance import processor
from pipeline.runtime import server
from tests.conftest import REPO
from tests.e2e import TINY_COMPRESS, TINY_GAN, TINY_TRAIN, commit, copy_project, run, update_params

OUTPUT = REPO / "reports/benchmarks/portability.json"
CORES = {"1 core": "0", "2 cores": "0,1"}
ISA_CAPS = {"AVX2": "AVX2", "AVX-512": "AVX512_CORE", "uncapped": None}
STARTS = {"cold": "0", "warm": "1"}


def one_run(
    project: Path, stages: list[str], cores: str, isa: str | None, warm: str
) -> tuple[dict[str, str], float]:
    """`dvc repro --force` of `stages` pinned to `cores`; the outputs' digests and its seconds."""
    environment = ["-u", "ONEDNN_MAX_CPU_ISA", f"PIPELINE_WARM={warm}"]
    if isa is not None:
        environment.append(f"ONEDNN_MAX_CPU_ISA={isa}")
    command = ["env", *environment, "taskset", "-c", cores, "dvc", "repro", "--force", *stages]
    started = time.perf_counter()
    result = run(project, *command, timeout=3600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"dvc repro failed ({cores}, {isa}, warm={warm}):\n{result.stderr[-3000:]}"
        )
    return fingerprint(project), seconds


def matrix(mode: str, stages: list[str], folder: Path) -> list[dict[str, object]]:
    project = copy_project(folder / mode)
    update_params(
        project,
        {
            "reproducibility": mode,
            "train": TINY_TRAIN,
            "gan": TINY_GAN,
            "compress": TINY_COMPRESS,
        },
    )
    commit(project, f"tiny params, {mode}")
    rows: list[dict[str, object]] = []
    reference: dict[str, str] | None = None
    for (cores_name, cores), (isa_name, isa), (start, warm) in itertools.product(
        CORES.items(), ISA_CAPS.items(), STARTS.items()
    ):
        digests, seconds = one_run(project, stages, cores, isa, warm)
        reference = reference or digests
        differ = differing(reference, digests)
        rows.append(
            {
                "mode": mode,
                "cores": cores_name,
                "isa_cap": isa_name,
                "start": start,
                "seconds": round(seconds, 1),
                "compared": len(digests),
                "differ_from_first": differ,
            }
        )
        print(
            f"{mode:<9} {cores_name:<8} {isa_name:<9} {start:<5} {seconds:7.0f} s  "
            f"{len(digests) - len(differ):>3} of {len(digests)} identical to the first"
            + (f": {', '.join(differ[:4])}{' …' if len(differ) > 4 else ''}" if differ else ""),
            flush=True,
        )
    server.stop([s for s in server.servers() if s["package"].startswith(str(folder))])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", nargs="+", default=["portable", "fast"])
    parser.add_argument("--stages", nargs="+", default=["train", "gan", "compress"])
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("portability: needs two cores to compare one with two")
    print(f"{'mode':<9} {'cores':<8} {'oneDNN':<9} {'start':<5} {'time':>9}  outputs")
    with tempfile.TemporaryDirectory(prefix="bench-portability-") as folder:
        rows = {mode: matrix(mode, args.stages, Path(folder)) for mode in args.modes}
    # Each mode's matrix replaces its own entry: the modes may be measured in separate runs.
    results = json.loads(OUTPUT.read_text()).get("modes", {}) if OUTPUT.exists() else {}
    for mode, runs in rows.items():
        identical = all(not run["differ_from_first"] for run in runs)
        print(f"{mode}: identical across the matrix: {'yes' if identical else 'NO'}")
        results[mode] = {
            "stages": args.stages,
            "identical_across_the_matrix": identical,
            "runs": runs,
            "machine": {**processor(), "python": platform.python_version()},
        }
    write_json(
        OUTPUT,
        {
            "params": "tests/e2e.py's TINY_TRAIN, TINY_GAN, TINY_COMPRESS; the rest as params.yaml",
            "modes": results,
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
