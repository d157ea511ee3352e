"""Plain against adversarially trained CNN, the way a user compares them: the workspace's CNN
(run `dvc repro` first) and a DVC experiment that flips `train.cnn.adversarial.method`, each a
lineage run in MLflow. Prints clean accuracy, ECE and FGSM/PGD accuracy per epsilon for both;
writes reports/benchmarks/adversarial.json.

    python -m benchmarks.adversarial [--method pgd]
"""

from __future__ import annotations

import argparse
import time

from mlflow.tracking import MlflowClient

from pipeline.core import tracking
from pipeline.core.io import write_json
from pipeline.core.params import load_params
from tests.conftest import REPO
from tests.e2e import run

OUTPUT = REPO / "reports/benchmarks/adversarial.json"


def evaluate_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    return {
        key.removeprefix("evaluate."): value
        for key, value in client.get_run(run_id).data.metrics.items()
        if key.startswith("evaluate.")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["fgsm", "pgd"], default="pgd")
    method = parser.parse_args().method
    params = load_params(REPO / "params.yaml")
    plain_id = tracking.lineage_of(params.experiment_name, REPO / "models/cnn/model.keras")
    client = MlflowClient(tracking.tracking_uri())
    started_ms = int(time.time() * 1000)
    start = time.perf_counter()
    result = run(
        REPO,
        "dvc",
        "exp",
        "run",
        "--temp",
        "-S",
        f"train.cnn.adversarial.method={method}",
        "evaluate@cnn",
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dvc exp run failed:\n{result.stderr[-3000:]}")
    experiment = client.get_experiment_by_name(params.experiment_name)
    assert experiment is not None
    (robust,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.adversarial_training = '{method}' and attributes.start_time >= {started_ms}"
        ),
    )
    plain = evaluate_metrics(client, plain_id)
    robust_metrics = evaluate_metrics(client, robust.info.run_id)
    # What the experiment trained with: the workspace's block with the method switched on.
    adversarial = params.train.cnn.adversarial.model_copy(update={"method": method})
    rows = ["accuracy", "ece", "corruption_accuracy_mean"] + [
        f"{attack}.eps_{epsilon:g}"
        for attack in ("fgsm", "pgd")
        for epsilon in params.evaluate.epsilons
    ]
    print(
        f"CNN, plain vs {method}-trained (epsilon {adversarial.epsilon}, weight "
        f"{adversarial.weight}); experiment took {seconds:.0f} s"
    )
    print(f"{'metric':<28} {'plain':>8} {method:>8}")
    for row in rows:
        print(f"{row:<28} {plain[row]:8.4f} {robust_metrics[row]:8.4f}")
    write_json(
        OUTPUT,
        {
            "method": method,
            "adversarial_params": adversarial.model_dump(),
            "pgd_steps_in_evaluation": params.evaluate.pgd_steps,
            "runs": {"plain": plain_id, method: robust.info.run_id},
            "plain": {row: plain[row] for row in rows},
            method: {row: robust_metrics[row] for row in rows},
            "experiment_seconds": seconds,
        },
    )
    print(f"wrote {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
