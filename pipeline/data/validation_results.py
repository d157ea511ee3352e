"""The validate stage's verdict, as the stages after it check it: a light module (no pandas,
no Great Expectations), so that checking costs the training stages nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.cli import PipelineError
from pipeline.core.io import read_json
from pipeline.core.layout import VALIDATION_RESULTS
from pipeline.data.prepared import Prepared


def read_results(results_path: Path = VALIDATION_RESULTS) -> dict[str, Any]:
    try:
        results = read_json(results_path)
    except (FileNotFoundError, ValueError):
        raise PipelineError(f"{results_path}: no validation results; run validate") from None
    if not isinstance(results, dict):
        raise PipelineError(f"{results_path}: not validation results (a JSON object)")
    return results


def require_validated(prepared: Prepared, results_path: Path = VALIDATION_RESULTS) -> None:
    """Refuse to use data that did not pass validation (also when a stage is run by hand)."""
    results = read_results(results_path)
    if results.get("content_hash") != prepared.content_hash:
        raise PipelineError(f"{results_path}: validated a different dataset; rerun validate")
    if not results.get("success"):
        raise PipelineError(f"{results_path}: the prepared data failed validation")


def failures(records: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One phrase per failed expectation, e.g.
    `split 'test': expect_column_values_to_be_in_set(label): 3 unexpected, e.g. [11]`."""
    found = []
    for split, items in records.items():
        for r in items:
            if r["success"]:
                continue
            target = f"{r['expectation']}({r['column']})" if r["column"] else r["expectation"]
            if "error" in r:
                detail = f"could not run: {r['error']}"
            elif r.get("unexpected_count"):
                detail = f"{r['unexpected_count']} unexpected, e.g. {r['unexpected_examples']}"
            elif "missing" in r:
                detail = f"missing {r['missing']}"
            else:
                detail = f"observed {r.get('observed')}"
            found.append(f"split '{split}': {target}: {detail}")
    return found
