"""Data validation with Great Expectations: a per-image table of each split, the expectation
suite run on it, and the results as plain records, a one-line list of failures and a page."""

from __future__ import annotations

import contextlib
import hashlib
import html
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.cli import PipelineError
from pipeline.core.io import read_json
from pipeline.core.layout import SUITE
from pipeline.core.params import ValidateParams
from pipeline.data.prepared import Prepared
from pipeline.data.sources import SPLITS


def image_hashes(x: np.ndarray) -> list[str]:
    """A digest per image: equal images, equal digests (duplicates across splits leak)."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in x]


def image_table(
    x: np.ndarray, y: np.ndarray, split: str, elsewhere: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """One row per image: the columns the expectation suite speaks about. `elsewhere`: the
    digests of the other splits' images, for the leakage column."""
    flat = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float64)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    with warnings.catch_warnings():  # all-NaN rows give NaN statistics, caught by nan_count
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {
            "pixel_min": np.nanmin(finite, axis=1, initial=np.inf, where=~np.isnan(finite)),
            "pixel_max": np.nanmax(finite, axis=1, initial=-np.inf, where=~np.isnan(finite)),
            "pixel_mean": np.nanmean(finite, axis=1),
        }
    return pd.DataFrame(
        {
            "split": split,
            "label": y.astype(np.int64),
            **stats,
            "nan_count": np.isnan(flat).sum(axis=1),
            "inf_count": np.isinf(flat).sum(axis=1),
            "in_other_splits": [digest in elsewhere for digest in image_hashes(x)],
            "shape": "x".join(str(d) for d in x.shape[1:]),
        }
    )


def suite_parameters(prepared: Prepared, p: ValidateParams) -> dict[str, Any]:
    """Values for the suite's $PARAMETER placeholders: params plus the train split's profile."""
    classes = list(range(int(prepared.manifest["num_classes"])))
    # The reference distribution is train's as it is, stray labels included, so that it is a
    # valid partition (weights sum to 1) even for data that fails the other expectations.
    values, counts = np.unique(prepared["train"][1], return_counts=True)
    if len(values) == 0:  # empty train split: the row-count expectation reports it
        values, counts = np.array(classes), np.ones(len(classes), dtype=np.int64)
    return {
        "classes": classes,
        "min_rows": p.min_rows_per_split,
        "max_rows": p.max_rows_per_split,
        "max_class_drift": p.max_class_drift,
        "train_class_partition": {
            "values": values.tolist(),
            "weights": (counts / counts.sum()).tolist(),
        },
        "image_shapes": ["x".join(str(d) for d in prepared.image_shape)],
    }


def load_suite_json(path: Path = SUITE) -> dict[str, Any]:
    try:
        suite = read_json(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: expectation suite not found") from None
    except ValueError as error:
        raise PipelineError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise PipelineError(f"{path}: not an expectation suite (needs an 'expectations' list)")
    return suite


def run_suite(
    suite_json: dict[str, Any],
    tables: dict[str, pd.DataFrame],
    parameters: dict[str, Any],
    docs_dir: Path | None = None,
    suite_path: Path = SUITE,
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Validate each split's table with GX Core; optionally build Data Docs into docs_dir.

    Returns, per split, one plain record per expectation (type, column, success, observation),
    and the number of Data Docs blocks GX failed to render.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="local",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                # The suite page renders placeholders, not values, and GX's KL-divergence
                # renderer fails on an unresolved partition: the validation pages show both.
                # GX reads this key, though its TypedDict of site configs does not list it.
                "site_section_builders": {"expectations": "None"},  # type: ignore[typeddict-unknown-key]
            },
        )
    batch = (
        context.data_sources.add_pandas("prepared")
        .add_dataframe_asset("images")
        .add_batch_definition_whole_dataframe("split")
    )
    try:
        suite = context.suites.add(gx.ExpectationSuite(**_suite_kwargs(suite_json)))
    except Exception as error:
        raise PipelineError(f"{suite_path}: invalid expectation suite ({error})") from None
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="prepared_images", data=batch, suite=suite)
    )
    records, problems = {}, []
    for split, table in tables.items():
        result = definition.run(
            batch_parameters={"dataframe": table},
            expectation_parameters=parameters,
            run_id=RunIdentifier(run_name=f"split-{split}"),  # names the Data Docs page
        )
        records[split] = [_record(item) for item in result.results]
    if docs_dir is not None:
        with _render_errors() as problems:
            context.build_data_docs(site_names=["local"])
    return records, len(problems)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _render_errors() -> Iterator[list[str]]:
    """GX 1.24's renderers fail on some failed results (KeyError 'unexpected_percent') and log a
    traceback per block; the page is still written without that block. Collect, don't print."""
    logger = logging.getLogger("great_expectations.render")
    collector, propagate = _Collector(), logger.propagate
    logger.addHandler(collector)
    logger.propagate = False
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


def _suite_kwargs(suite_json: dict[str, Any]) -> dict[str, Any]:
    # GX assigns ids on add; stored ids from another context would be rejected.
    expectations = [{k: v for k, v in e.items() if k != "id"} for e in suite_json["expectations"]]
    return {
        "name": suite_json.get("name", "prepared_images"),
        "expectations": expectations,
        "meta": suite_json.get("meta", {}),
    }


def _record(item: Any) -> dict[str, Any]:
    config, result = item.expectation_config, item.result or {}
    record: dict[str, Any] = {
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(item.success),
    }
    if item.exception_info and item.exception_info.get("raised_exception"):
        record["error"] = str(item.exception_info.get("exception_message"))
    if "observed_value" in result and result["observed_value"] is not None:
        record["observed"] = _plain(result["observed_value"])
    if "unexpected_count" in result:
        record["unexpected_count"] = int(result["unexpected_count"])
        record["unexpected_examples"] = _plain(result.get("partial_unexpected_list", [])[:5])
    if result.get("partial_missing_list"):
        record["missing"] = _plain(result["partial_missing_list"])
    return record


def _plain(value: Any) -> Any:
    """GX observations as JSON-safe plain values (NaN and inf as strings)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def summary_html(results: dict[str, Any]) -> str:
    """A page a person can read offline (Data Docs pull their styling from CDNs)."""
    rows = []
    for split, items in results["splits"].items():
        for r in items:
            status = "pass" if r["success"] else "FAIL"
            observed = r.get("error") or r.get("observed", r.get("unexpected_count", ""))
            cells = [split, r["expectation"], r["column"] or "", status, observed]
            row = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells)
            rows.append(f"<tr class='{status.lower()}'>{row}</tr>")
    verdict = "passed" if results["success"] else "FAILED"
    unrendered = results.get("data_docs_unrendered_blocks", 0)
    note = f" (GX could not render {unrendered} of its blocks; this table is complete)" * bool(
        unrendered
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data validation: {verdict}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: .3rem .7rem; border-bottom: 1px solid #ddd; text-align: left; }}
tr.fail td {{ background: #fde8e8; }} tr.pass td:nth-child(4) {{ color: #18794e; }}
code {{ background: #f3f3f3; padding: 0 .2rem; }}
</style></head><body>
<h1>Data validation {verdict}</h1>
<p>Suite <code>{html.escape(results["suite"])}</code>
on data <code>{html.escape(results["content_hash"][:12])}</code>
({html.escape(str(results["rows"]))} rows per split).
Full GX Data Docs: <a href="data_docs/index.html">data_docs/index.html</a>{note}.</p>
<table><tr><th>split</th><th>expectation</th><th>column</th><th>result</th><th>observed</th></tr>
{"".join(rows)}
</table></body></html>
"""


def validate(
    prepared: Prepared, p: ValidateParams, docs_dir: Path | None = None, suite: Path = SUITE
) -> dict[str, Any]:
    digests = {split: frozenset(image_hashes(prepared[split][0])) for split in SPLITS}
    tables = {
        split: image_table(
            *prepared[split], split, frozenset().union(*(digests[s] for s in SPLITS if s != split))
        )
        for split in SPLITS
    }
    records, unrendered = run_suite(
        load_suite_json(suite), tables, suite_parameters(prepared, p), docs_dir, suite
    )
    return {
        "data_docs_unrendered_blocks": unrendered,
        "success": all(r["success"] for items in records.values() for r in items),
        "suite": str(suite),  # the file whose expectations were run
        "content_hash": prepared.content_hash,
        "rows": {split: len(table) for split, table in tables.items()},
        "splits": records,
    }
