"""Where a result came from: the git commit, the inputs as DVC hashes them, and the versions of
the libraries that made it. Kept apart from MLflow, so that stages that only report (no
tracking) need not import it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = (
    "tensorflow",
    "tf_keras",
    "tensorflow-model-optimization",
    "mlflow",
    "dvc",
    "great_expectations",
    "numpy",
    "scikit-learn",
)


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    # Dirty means code or params differ from the commit. DVC itself rewrites dvc.lock and the
    # metrics under reports/ while `dvc repro` runs, so those do not count.
    dirty = (
        git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)dvc.lock",
            ":(exclude)reports",
        )
        if commit
        else ""
    )
    return {"git_commit": commit or "none", "git_dirty": str(bool(dirty)).lower()}


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[f"version.{package}"] = version(package)
    return versions


def dvc_inputs(stage: str) -> dict[str, Any]:
    """What dvc.lock records for `stage`'s inputs, computed by DVC itself: files and folders by
    md5, params by value; `digest` sums them up. A stage run outside its DVC project (by hand,
    elsewhere) gets the reason instead: provenance must not stop the work."""
    try:
        from dvc.dvcfile import ProjectFile
        from dvc.repo import Repo

        with Repo(".") as repo:
            project = ProjectFile(repo, "dvc.yaml")
            # The stage as dvc.yaml defines it, without dvc.lock: its recorded hashes are the
            # previous run's, and parsing it would take most of the time.
            found = project.LOADER(project, project.contents, {})[stage]
            inputs = {}
            for dep in found.deps:
                dep.save()
                inputs[str(dep.def_path)] = dep.hash_info.value
    except Exception as error:  # DVC's own errors vary by cause; all mean "not recorded"
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    text = json.dumps(inputs, sort_keys=True, default=str)
    return {"inputs": inputs, "digest": hashlib.md5(text.encode()).hexdigest()}


def processor() -> dict[str, Any]:
    """The machine's processor as Linux names it, its vector instruction sets and the cores this
    process may run on:
    what a result that differs between machines is traced back to."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):  # no /proc: not Linux
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    model, flags = fields.get("model name", "unknown processor"), fields.get("flags", "").split()
    vectors = sorted({flag for flag in flags if flag.startswith(("avx", "amx"))})
    return {"model": model, "instruction_sets": vectors, "cores": len(os.sched_getaffinity(0))}
