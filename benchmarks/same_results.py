"""Two commits, the same results: a cold `dvc repro` of each in its own clone, on this machine,
with the default params on the embedded digits. Every metrics file (measured speed left out) and
every set of weights must be identical; a refactoring that changes none of the computations
passes. Prints a table and writes reports/benchmarks/same_results.json.

    python -m benchmarks.same_results BEFORE [AFTER]   (AFTER defaults to HEAD)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.repro import timed
from benchmarks.reproducibility import MEASURED, differing, fingerprint
from pipeline.core.io import write_json
from tests.conftest import REPO

OUTPUT = REPO / "reports/benchmarks/same_results.json"
# What a commit may change on purpose without changing a result: the validation results name the
# suite file that was run (`expectations/prepared_images.json`, once the bare suite name).
NAMING = {"reports/validation/results.json": ("suite",)}


def clone(revision: str, folder: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    subprocess.run(["git", "checkout", "-q", revision], cwd=folder, check=True)
    return folder


def results(project: Path) -> dict[str, str]:
    """fingerprint()'s digests, taken after what only names things is dropped."""
    for name, keys in NAMING.items():
        path = project / name
        content = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in content.items() if k not in keys}))
    return fingerprint(project)


def run(revision: str, folder: Path) -> tuple[dict[str, str], float]:
    project = clone(revision, folder)
    seconds = timed(project, "dvc", "repro")
    return results(project), seconds


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cores": os.cpu_count(), "cpu": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", help="the earlier commit")
    parser.add_argument("after", nargs="?", default="HEAD", help="the later commit (HEAD)")
    args = parser.parse_args()
    revisions = {
        label: subprocess.run(
            ["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        for label, rev in (("before", args.before), ("after", args.after))
    }
    with tempfile.TemporaryDirectory(prefix="bench-same-results-") as folder:
        before, before_s = run(revisions["before"], Path(folder) / "before")
        after, after_s = run(revisions["after"], Path(folder) / "after")
    differ = differing(before, after)
    print(f"{'artifact':<48} identical")
    for name in sorted(before.keys() | after.keys()):
        print(f"{name:<48} {'no' if name in differ else 'yes'}")
    compared = len(before.keys() | after.keys())
    print(f"\n{compared - len(differ)} of {compared} identical ({before_s:.0f} s, {after_s:.0f} s)")
    write_json(
        OUTPUT,
        {
            "revisions": revisions,
            "machine": machine(),
            "compared": sorted(before.keys() | after.keys()),
            "different": differ,
            "identical": not differ,
            "seconds": {"before": before_s, "after": after_s},
            "left_out_of_the_comparison": {"measured": sorted(MEASURED), "naming": NAMING},
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
