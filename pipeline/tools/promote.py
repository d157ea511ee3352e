"""promote: register each classifier family's candidate and bless it, as TFX's Evaluator does.

Run after `dvc repro`. The candidate is the model in models/<family>/ (its lineage run). It
becomes the registered model's `champion` only if it meets every absolute threshold in
`promote` params and falls no more than `tolerance` below the current champion; otherwise it is
registered as the `challenger`. Data that failed validation promotes nothing. The decisions and
every reason go to reports/promotion.json and to a `promote` child run of each lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.core import tracking
from pipeline.core.cli import PipelineError, run_stage, stage_parser
from pipeline.core.io import read_json, write_json
from pipeline.core.layout import (
    MANIFEST,
    PREPARED_DIR,
    PROMOTION,
    REJECTED_DIR,
    VALIDATION_RESULTS,
    model_dir,
)
from pipeline.core.outputs import Lineage
from pipeline.core.params import PromoteParams, flatten, load_params

REPORT = PROMOTION
RESULTS = VALIDATION_RESULTS
CHAMPION, CHALLENGER = "champion", "challenger"
# Lineage-run metrics the thresholds read (the same names for every family).
ACCURACY = "evaluate.accuracy"
ROBUST_ACCURACY = "evaluate.robust_accuracy"
LATENCY = "evaluate.latency_ms_batch1"
SIZE = "evaluate.model_bytes"


def check(name: str, value: float | None, bound: float, at_least: bool) -> dict[str, Any]:
    """One threshold: passed, or the reason it did not."""
    if value is None:
        return {
            "check": name,
            "value": None,
            "bound": bound,
            "passed": False,
            "reason": f"{name}: not measured (run `dvc repro` up to evaluate)",
        }
    passed = value >= bound if at_least else value <= bound
    relation = ">=" if at_least else "<="
    return {
        "check": name,
        "value": value,
        "bound": bound,
        "passed": bool(passed),
        "reason": f"{name} {value:.6g} {'meets' if passed else 'fails'} {relation} {bound:.6g}",
    }


def bless(
    candidate: dict[str, float], champion: dict[str, float] | None, p: PromoteParams
) -> tuple[bool, list[dict[str, Any]]]:
    """Absolute thresholds, then no regression beyond `tolerance` against the champion's own
    metrics (when there is one). Returns (blessed, every check with its reason)."""
    checks = [
        check("accuracy", candidate.get(ACCURACY), p.min_accuracy, at_least=True),
        check("robust_accuracy", candidate.get(ROBUST_ACCURACY), p.min_robust_accuracy, True),
        check("model_bytes", candidate.get(SIZE), p.max_model_bytes, at_least=False),
        check("latency_ms", candidate.get(LATENCY), p.max_latency_ms, at_least=False),
    ]
    if champion is not None:
        for name, key in (("accuracy", ACCURACY), ("robust_accuracy", ROBUST_ACCURACY)):
            if key in champion:
                checks.append(
                    check(
                        f"{name}_vs_champion",
                        candidate.get(key),
                        champion[key] - p.tolerance,
                        at_least=True,
                    )
                )
    return all(c["passed"] for c in checks), checks


def validated(validation: dict[str, Any], data_hash: str | None) -> list[str]:
    """Why the candidate's data does not count as validated (empty: it does)."""
    if not validation.get("success"):
        return [f"{RESULTS}: the prepared data failed validation"]
    if data_hash is None or validation.get("content_hash") != data_hash:
        return [f"the candidate was trained on data {data_hash}, not the validated data"]
    return []


def promote_family(family: str, experiment: str, p: PromoteParams, validation: dict) -> dict:
    run_id, name = Lineage.of(model_dir(family)).run_id, f"{experiment}-{family}"
    run = tracking.run_summary(run_id)
    decision: dict[str, Any] = {"registered_model": name, "candidate_run_id": run_id}
    problems = validated(validation, run["tags"].get("data_hash"))
    if problems:
        return {**decision, "decision": "rejected", "version": None, "reasons": problems}
    current = tracking.alias_version(name, CHAMPION)
    decision["previous_champion"] = current
    if current is not None and current["run_id"] == run_id:
        return {
            **decision,
            "decision": CHAMPION,
            "version": current["version"],
            "reasons": ["already the champion: nothing to compare"],
        }
    champion = tracking.run_summary(current["run_id"])["metrics"] if current else None
    blessed, checks = bless(run["metrics"], champion, p)
    alias = CHAMPION if blessed else CHALLENGER
    version = tracking.register_version(name, run_id, {"decision": alias})
    tracking.set_alias(name, alias, version)
    reasons = [c["reason"] for c in checks if blessed or not c["passed"]]
    if current is None and blessed:
        reasons.append("no champion yet: the first candidate that meets the thresholds")
    decision.update(decision=alias, version=version, checks=checks, reasons=reasons)
    with tracking.stage_run(
        run_id, "promote", {"model_family": family, "decision": alias}
    ) as child:
        tracking.log_params(child, flatten(p, "promote"))
        tracking.log_dict(child, decision, "promote/decision.json")
    tracking.set_tags(run_id, {"promotion.decision": alias, "promotion.version": version})
    return decision


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser("promote", __doc__ or "").parse_args(argv)
    params = load_params(args.params)
    p = params.promote
    try:
        validation = read_json(RESULTS)
    except (FileNotFoundError, ValueError):
        raise PipelineError(f"{RESULTS}: no validation results; run `dvc repro` first") from None
    # Results left from an earlier run do not vouch for data ingested since: when validation
    # fails, the last good results stay in place while data/prepared holds the rejected data.
    stale = validation.get("content_hash") != prepared_hash()
    if stale:
        validation = {**validation, "success": False}
    tracking.require_store()
    decisions = {
        family: promote_family(family, params.experiment_name, p, validation) for family in p.models
    }
    write_json(REPORT, {"thresholds": p.model_dump(), "models": decisions})
    for family, d in decisions.items():
        version = f" version {d['version']}" if d["version"] else ""
        print(f"promote: {family}: {d['decision']}{version} of {d['registered_model']}")
        for reason in d["reasons"]:
            print(f"  - {reason}")
    if stale:
        raise PipelineError(
            f"{PREPARED_DIR} holds data that {RESULTS} does not vouch for (failures, if any, in "
            f"{REJECTED_DIR}); nothing promoted"
        )
    if not validation.get("success"):
        raise PipelineError(f"{RESULTS}: the prepared data failed validation; nothing promoted")


def prepared_hash() -> str | None:
    try:
        return str(read_json(PREPARED_DIR / MANIFEST)["content_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    run_stage("promote", main)
