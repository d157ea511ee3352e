"""ensemble: the mean of the three families' class probabilities, scored as evaluate scores each
family (clean accuracy and calibration, white-box attacks, corruptions) and against the attacks
crafted on each family alone; a lineage run of its own in MLflow, tagged with its members' runs.

Writes reports/ensemble.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core import layout, tracking
from pipeline.core.cli import run_stage
from pipeline.core.outputs import EnsembleReport, LineageMetric, severity_key, unmet
from pipeline.core.params import Params, flatten
from pipeline.core.stage import start
from pipeline.data.prepared import Prepared, load_prepared

# The evaluate params the ensemble is measured with (dvc.yaml lists the same as its params).
EVALUATE_KEYS = (
    "calibration_bins",
    "epsilons",
    "robust_epsilon",
    "pgd_steps",
    "pgd_step_size",
    "noise_sigmas",
    "occlusion_fractions",
    "shifts",
    "rotations",
    "max_images",
)


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("ensemble", __doc__, argv)
    with timer.phase("data"):
        prepared = load_prepared()
    timer.imports("pipeline.ml.artifacts", "pipeline.ml.ensemble")
    with timer.phase("data"):  # every member is checked before any work
        members = load_members()
        lineages = {
            name: tracking.lineage_of(params.experiment_name, layout.model_file(name))
            for name in members
        }
    with timer.phase("compute"):
        report = measure(members, prepared, params)
    with timer.phase("outputs"):
        report.write(layout.ENSEMBLE_REPORT)
    with timer.phase("logging"), tracking.after_outputs([layout.ENSEMBLE_REPORT]):
        run = log_ensemble(report, lineages, params, prepared)
    timer.finish(lambda metrics: tracking.log_metrics(run, metrics))
    print(summary(report, params.evaluate.robust_epsilon))


def load_members() -> dict[str, Any]:
    from pipeline.ml.artifacts import load_keras

    return {name: load_keras(layout.model_file(name)) for name in layout.MODEL_NAMES}


def measure(members: Mapping[str, Any], prepared: Prepared, params: Params) -> EnsembleReport:
    from pipeline.ml.ensemble import evaluate_ensemble

    report = evaluate_ensemble(
        members, prepared["test"], prepared.class_names, params.evaluate, params.seed
    )
    return EnsembleReport.model_validate(report)


def headline_metrics(report: EnsembleReport) -> dict[str, float]:
    """The members' metric names where the meaning carries over, and each member's attack at
    the headline radius carried over to the ensemble."""
    robust = severity_key(report.adversarial.robust_epsilon)
    return {
        "test_accuracy": report.clean.accuracy,
        LineageMetric.ACCURACY: report.clean.accuracy,
        "evaluate.macro_f1": report.clean.macro_f1,
        "evaluate.ece": report.clean.ece,
        LineageMetric.ROBUST_ACCURACY: report.adversarial.robust_accuracy,
        "evaluate.corruption_accuracy_mean": report.corruption_accuracy_mean,
        **{
            f"evaluate.transferred_pgd_from_{name}.eps_{robust}": attacks.pgd[robust]
            for name, attacks in report.transferred_attacks.items()
        },
    }


def log_ensemble(
    report: EnsembleReport, lineages: Mapping[str, str], params: Params, prepared: Prepared
) -> str:
    """A lineage run for the ensemble: its members' lineage runs as tags, evaluate's params,
    the metrics, the report and the data; returns its id. No model is logged: the members are,
    each in its own lineage run."""
    tags = {
        **tracking.data_tags(prepared.manifest, params.seed, params.mlflow.tags),
        "model_family": "ensemble",
        "dvc_stage": "ensemble",
        **{f"member.{name}": run for name, run in lineages.items()},
    }
    logged = {"seed": params.seed, "members": ",".join(report.members)}
    with tracking.lineage_run(params.experiment_name, "ensemble", tags) as run:
        used = params.evaluate.model_dump(include=set(EVALUATE_KEYS))
        tracking.log_params(run, {**logged, **flatten(used, "evaluate")})
        tracking.log_metrics(run, headline_metrics(report))
        tracking.log_artifacts(run, [layout.ENSEMBLE_REPORT], "ensemble")
        tracking.log_datasets(run, prepared.manifest, params.data.model_dump())
    return run


def summary(report: EnsembleReport, epsilon: float) -> str:
    best = max(report.member_accuracy.values())
    return (
        f"ensemble: mean of {', '.join(report.members)}: accuracy {report.clean.accuracy:.4f} "
        f"(best member {best:.4f}), ECE {report.clean.ece:.4f}, PGD@{epsilon:g} "
        f"{report.adversarial.robust_accuracy:.4f}; targets not met: "
        f"{unmet(report.targets) or 'none'} -> {layout.ENSEMBLE_REPORT}"
    )


if __name__ == "__main__":
    run_stage("ensemble", main)
