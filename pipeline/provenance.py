"""Where a result came from: the git commit and the versions of the libraries that made it.
Kept apart from MLflow, so that stages that only report (no tracking) need not import it."""

from __future__ import annotations

import contextlib
import subprocess
from importlib.metadata import PackageNotFoundError, version

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
