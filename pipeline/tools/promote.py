"""promote: register each classifier family's candidate and bless it, as TFX's Evaluator does.

Run after `dvc repro`. The candidate is the model in models/<family>/ (its lineage run). It
becomes the registered model's `champion` only if it meets every absolute threshold in
`promote` params, falls no more than `tolerance` below the current champion, and passes infra
validation (`pipeline.ml.infra_validation`: loaded in a fresh process through the registry and
through LiteRT, it answers as evaluate's model); otherwise it is registered as the
`challenger`. Data that failed validation promotes nothing. The decisions and every reason go
to reports/promotion.json and to a `promote` child run of each lineage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pipeline.core import tracking
from pipeline.core.cli import PipelineError, run_stage, stage_args
from pipeline.core.io import file_digest, read_json
from pipeline.core.layout import (
    BASELINE_NAMES,
    BASELINE_REPORTS,
    MANIFEST,
    PREPARED_DIR,
    PROMOTION,
    REJECTED_DIR,
    SPLIT_FILE,
    VALIDATION_RESULTS,
    baseline_report,
    compress_report,
    model_card_file,
    model_file,
)
from pipeline.core.model_card import speed_section
from pipeline.core.outputs import (
    BaselineReport,
    Check,
    Checks,
    CompressReport,
    Decision,
    LineageMetric,
    Promotion,
    RegistryVersion,
)
from pipeline.core.params import PromoteParams, flatten, load_params
from pipeline.data.sources import read_npz
from pipeline.data.validation_results import read_results
from pipeline.ml.infra_validation import validate_infra

CHAMPION, CHALLENGER = "champion", "challenger"
# Lineage-run metrics the thresholds read (the same names for every family).
ACCURACY = LineageMetric.ACCURACY
ROBUST_ACCURACY = LineageMetric.ROBUST_ACCURACY
LATENCY = LineageMetric.LATENCY
SIZE = LineageMetric.SIZE


class Blessing(NamedTuple):
    blessed: bool
    checks: Checks
    reasons: dict[str, str]  # each check's outcome in words


def check(name: str, value: float | None, bound: float, at_least: bool) -> tuple[Check, str]:
    """One threshold, and its outcome in words."""
    if value is None:
        unmeasured = Check(value=None, bound=bound, met=False)
        return unmeasured, f"{name}: not measured (run `dvc repro` up to evaluate)"
    made = Check.at_least(value, bound) if at_least else Check.at_most(value, bound)
    relation = ">=" if at_least else "<="
    return made, f"{name} {value:.6g} {'meets' if made.met else 'fails'} {relation} {bound:.6g}"


BASELINE_RULE = "accuracy_vs_best_baseline"


class Baseline(NamedTuple):
    name: str
    test_accuracy: float


def best_baseline() -> Baseline | None:
    """The most accurate baseline on the test split, or None when none has been measured."""
    measured = []
    for name in BASELINE_NAMES:
        with contextlib.suppress(PipelineError):
            measured.append(
                Baseline(name, BaselineReport.read(baseline_report(name)).test_accuracy)
            )
    return max(measured, key=lambda b: b.test_accuracy, default=None)


def bless(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    p: PromoteParams,
    baseline: Baseline | None = None,
) -> Blessing:
    """Absolute thresholds, the best baseline's test accuracy (when `beat_baselines`), then no
    regression beyond `tolerance` against the champion's own metrics (when there is one)."""
    rules = [
        ("accuracy", candidate.get(ACCURACY), p.min_accuracy, True),
        ("robust_accuracy", candidate.get(ROBUST_ACCURACY), p.min_robust_accuracy, True),
        ("model_bytes", candidate.get(SIZE), p.max_model_bytes, False),
        ("latency_ms", candidate.get(LATENCY), p.max_latency_ms, False),
    ]
    if champion is not None:
        for name, key in (("accuracy", ACCURACY), ("robust_accuracy", ROBUST_ACCURACY)):
            if key in champion:
                bound = champion[key] - p.tolerance
                rules.append((f"{name}_vs_champion", candidate.get(key), bound, True))
    if p.beat_baselines and baseline is not None:
        bound = baseline.test_accuracy
        rules.append((BASELINE_RULE, candidate.get(ACCURACY), bound, True))
    outcomes = {name: check(name, value, bound, up) for name, value, bound, up in rules}
    checks = {name: made for name, (made, _) in outcomes.items()}
    reasons = {name: words for name, (_, words) in outcomes.items()}
    unmeasured = p.beat_baselines and baseline is None  # nothing measured to beat: no pass
    if unmeasured:
        reasons[BASELINE_RULE] = (
            f"{BASELINE_RULE}: no baseline measured in {BASELINE_REPORTS} (run the baseline stage)"
        )
    elif baseline is not None and BASELINE_RULE in reasons:
        reasons[BASELINE_RULE] += f" (the {baseline.name} baseline's test accuracy)"
    return Blessing(not unmeasured and all(c.met for c in checks.values()), checks, reasons)


def validated(validation: dict[str, Any], data_hash: str | None) -> list[str]:
    """Why the candidate's data does not count as validated (empty: it does)."""
    if not validation.get("success"):
        return [f"{VALIDATION_RESULTS}: the prepared data failed validation"]
    if data_hash is None or validation.get("content_hash") != data_hash:
        return [f"the candidate was trained on data {data_hash}, not the validated data"]
    return []


def promote_family(
    family: str,
    experiment: str,
    p: PromoteParams,
    validation: dict,
    baseline: Baseline | None = None,
) -> Decision:
    run_id = tracking.lineage_of(experiment, model_file(family))
    name = f"{experiment}-{family}"
    run = tracking.run_summary(run_id)
    problems = validated(validation, run["tags"].get("data_hash"))
    if problems:
        return Decision(
            registered_model=name,
            candidate_run_id=run_id,
            decision="rejected",
            version=None,
            reasons=problems,
        )
    found = tracking.alias_version(name, CHAMPION)
    current = RegistryVersion(**found) if found else None
    if current is not None and current.run_id == run_id:
        return Decision(
            registered_model=name,
            candidate_run_id=run_id,
            decision=CHAMPION,
            version=current.version,
            previous_champion=current,
            reasons=["already the champion: nothing to compare"],
        )
    champion = tracking.run_summary(current.run_id)["metrics"] if current else None
    blessed, checks, reasons = bless(run["metrics"], champion, p, baseline)
    version = tracking.register_version(name, run_id)
    # Every failed check's words, or all of them when blessed; a rule with no check (nothing
    # measured to compare with) always says why.
    said = [r for n, r in reasons.items() if n not in checks or blessed or not checks[n].met]
    infra = None
    if blessed:  # a candidate the thresholds refuse need not be loaded to be refused
        images = canary_images(p.canary_images)
        infra = validate_infra(family, f"models:/{name}/{version}", run_id, images, p)
        said += infra.reasons
        blessed = infra.passed
    alias = CHAMPION if blessed else CHALLENGER
    tags = {"decision": alias, **({"infra_validation": infra.passed} if infra else {})}
    tracking.tag_version(name, version, tags)
    tracking.set_alias(name, alias, version)
    describe(name, version, run_id, family, run["metrics"])
    if current is None and blessed:
        said.append("no champion yet: the first candidate that meets the thresholds")
    decision = Decision(
        registered_model=name,
        candidate_run_id=run_id,
        decision=alias,
        version=version,
        previous_champion=current,
        checks=checks,
        infra_validation=infra,
        reasons=said,
    )
    with tracking.stage_run(
        run_id, "promote", {"model_family": family, "decision": alias}
    ) as child:
        tracking.log_params(child, flatten(p, "promote"))
        tracking.log_dict(child, decision.model_dump(), "promote/decision.json")
    tracking.set_tags(run_id, {"promotion.decision": alias, "promotion.version": version})
    return decision


def describe(
    name: str, version: str, run_id: str, family: str, metrics: Mapping[str, float]
) -> None:
    """The report stage's model card, as the version's description in the registry and as an
    artifact of the lineage run, so the MLflow UI shows what the model is and how it measured;
    the description adds the speed the lineage run measured, which the card cannot hold."""
    card = model_card_file(family)
    if not card.is_file():
        print(f"promote: {family}: {card} missing (run the report stage): no description set")
        return
    text = card.read_text(encoding="utf-8")
    if f"`{file_digest(model_file(family))}`" not in text:  # the card names its model's sha256
        print(f"promote: {family}: {card} describes another model (run the report stage)")
        return
    tracking.log_artifacts(run_id, [card], "model_card")
    latency = {
        key.split(".")[1]: value
        for key, value in metrics.items()
        if key.startswith("compress.") and key.endswith(".latency_ms_median")
    }
    try:
        text += "\n" + speed_section(CompressReport.read(compress_report(family)), latency)
    except PipelineError as error:
        print(f"promote: {family}: no speed in the description ({error})")
    tracking.describe_version(name, version, text.rstrip("\n") + "\n", str(card))


def main(argv: Sequence[str] | None = None) -> None:
    params = load_params(stage_args("promote", __doc__, argv).params)
    p, experiment = params.promote, params.experiment_name
    validation = read_results(VALIDATION_RESULTS)
    # Results left from an earlier run do not vouch for data ingested since: when validation
    # fails, the last good results stay in place while data/prepared holds the rejected data.
    stale = validation.get("content_hash") != prepared_hash()
    if stale:
        validation = {**validation, "success": False}
    tracking.require_store()
    baseline = best_baseline()
    decisions = {
        family: promote_family(family, experiment, p, validation, baseline) for family in p.models
    }
    Promotion(thresholds=p.model_dump(), models=decisions).write(PROMOTION)
    for family, d in decisions.items():
        version = f" version {d.version}" if d.version else ""
        print(f"promote: {family}: {d.decision}{version} of {d.registered_model}")
        for reason in d.reasons:
            print(f"  - {reason}")
    if stale:
        raise PipelineError(
            f"{PREPARED_DIR} holds data that {VALIDATION_RESULTS} does not vouch for (failures, "
            f"if any, in {REJECTED_DIR}); nothing promoted"
        )
    if not validation.get("success"):
        raise PipelineError(
            f"{VALIDATION_RESULTS}: the prepared data failed validation; nothing promoted"
        )


def canary_images(count: int) -> np.ndarray:
    """The first `count` prepared test images."""
    images, _ = read_npz(PREPARED_DIR / SPLIT_FILE.format(split="test"))
    return np.asarray(images[:count], np.float32)


def prepared_hash() -> str | None:
    try:
        return str(read_json(PREPARED_DIR / MANIFEST)["content_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    run_stage("promote", main)
