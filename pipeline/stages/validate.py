"""validate: run the Great Expectations suite on a per-image table built from data/prepared/.

Writes reports/validation/ (results.json, a self-contained summary.html, GX Data Docs) and exits
non-zero naming every failed expectation, so no training stage runs on bad data.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.cli import PipelineError, run_stage
from pipeline.core.io import atomic_path, write_json, write_text
from pipeline.core.layout import PREPARED_DIR, REJECTED_DIR, SUITE, VALIDATION_DIR
from pipeline.core.stage import start
from pipeline.data.prepared import load_prepared


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("validate", __doc__, argv)
    with timer.phase("data"):
        prepared = load_prepared(PREPARED_DIR)
    with timer.phase("imports"):
        import great_expectations  # noqa: F401  (its ~4 s belong to imports, not to the data)

        from pipeline.data.validation import validate
        from pipeline.data.validation_results import failures
    VALIDATION_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".validate.", dir=VALIDATION_DIR) as staging:
        # Checking the data (GX, Data Docs included) is neither model compute nor a plain write.
        with timer.phase("data"):
            results = validate(prepared, params.validate_, Path(staging) / "data_docs", SUITE)
        failed = failures(results["splits"])
        with timer.phase("outputs"):
            write_results(REJECTED_DIR if failed else VALIDATION_DIR, results, Path(staging))
    if failed:
        raise PipelineError(
            f"{len(failed)} expectation(s) failed: {'; '.join(failed)} (details: "
            f"{REJECTED_DIR / 'summary.html'}; the last good results stay in {VALIDATION_DIR})"
        )
    shutil.rmtree(REJECTED_DIR, ignore_errors=True)
    timer.finish()
    print(f"validate: all expectations passed on {results['rows']} -> {VALIDATION_DIR}")


def write_results(folder: Path, results: dict[str, Any], staging: Path) -> None:
    """Results, page and Data Docs into `folder`. Failing data writes to the rejected folder:
    the last good results, which the next stages and promotion trust, stay in place."""
    from pipeline.data.validation import summary_html

    with atomic_path(folder / "data_docs") as final:
        (staging / "data_docs").rename(final)
    write_text(folder / "summary.html", summary_html(results))
    write_json(folder / "results.json", results)


if __name__ == "__main__":
    run_stage("validate", main)
