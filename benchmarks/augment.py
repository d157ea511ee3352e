"""The search behind each family's default `train.<model>.augment`: every candidate below trained
on the pipeline's own split of the data `params.yaml` names, under three training seeds, and
measured as evaluate measures the models (clean test accuracy, a one-pixel diagonal shift, a
rotation, PGD at `evaluate.robust_epsilon`). Prints the mean and the spread (max - min) of each,
picks each family's default by the rule below, and writes reports/benchmarks/augment.json, which
`tests/test_params.py` holds params.yaml's defaults to.

    python -m benchmarks.augment [--models fnn cnn lstm] [--seeds 42 43 44]

The rule: among the candidates whose mean shift accuracy reaches the family's target and whose
mean PGD accuracy is no lower than without augmentation, the one with the highest mean clean
accuracy (the higher mean shift accuracy breaks a tie); if none keeps the PGD accuracy, the same
among those reaching the shift target; if none reaches it, the highest mean shift accuracy. The
split is the pipeline's (its `seed`); only the training seed (initial weights, batch order,
augmentation draws) varies.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core.io import read_json, write_json
from pipeline.core.params import MODEL_NAMES, Params, load_params, parse_params
from pipeline.core.provenance import processor
from pipeline.core.reproducibility import apply

OUTPUT = Path("reports/benchmarks/augment.json")
SEEDS = (42, 43, 44)
SHIFT_PIXELS = 1
ROTATION_DEGREES = 10.0
# Accuracy under a one-pixel diagonal shift each family must reach (mean over the seeds).
SHIFT_TARGETS = {"cnn": 0.95, "fnn": 0.90, "lstm": 0.90}
# Each candidate replaces these parts of the family's params block: its augmentation (translation
# as a share of the side, 8 px digits: 0.15 is up to 1.2 px; rotation in degrees) and, for some,
# adversarial training, which the one-pixel shift's robustness may cost in PGD accuracy.
# "nearest" candidates move whole pixels, as the one-pixel shift evaluate applies does, instead
# of blending neighbours, which blurs an 8 px digit's strokes.
NO_AUGMENT = {"translation": 0.0, "rotation": 0.0, "zoom": 0.0, "contrast": 0.0}
FGSM_TRAINING = {"method": "fgsm", "epsilon": 0.1, "weight": 0.5}
NEAREST_SHIFT = {"translation": 0.15, "interpolation": "nearest"}
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "shift": {"augment": {"translation": 0.15}},
    "shift+rotate": {"augment": {"translation": 0.15, "rotation": 10.0}},
    "wide shift+rotate": {"augment": {"translation": 0.25, "rotation": 15.0}},
    "wide shift+rotate+zoom": {"augment": {"translation": 0.25, "rotation": 15.0, "zoom": 0.1}},
    "shift, FGSM training": {"augment": {"translation": 0.15}, "adversarial": FGSM_TRAINING},
    "shift+rotate, FGSM training": {
        "augment": {"translation": 0.15, "rotation": 10.0},
        "adversarial": FGSM_TRAINING,
    },
    "nearest shift, FGSM training": {"augment": NEAREST_SHIFT, "adversarial": FGSM_TRAINING},
    "nearest shift+rotate, FGSM training": {
        "augment": {**NEAREST_SHIFT, "rotation": 10.0},
        "adversarial": FGSM_TRAINING,
    },
}
BASE = "none"  # plain training: the PGD accuracy a candidate must keep


def with_candidate(
    raw: dict[str, Any], name: str, candidate: dict[str, dict[str, Any]], seed: int
) -> Params:
    """params.yaml's values with `name`'s augmentation and adversarial training replaced by
    `candidate`'s (none where it names none) and the training seed by `seed` (the split is
    prepared once, from params.yaml's own seed)."""
    block = raw.setdefault("train", {}).setdefault(name, {})
    block["augment"] = {**NO_AUGMENT, **candidate.get("augment", {})}
    block["adversarial"] = {"method": "none", **candidate.get("adversarial", {})}
    return parse_params({**raw, "seed": seed})


def measure(name: str, params: Params, prepared: Any) -> dict[str, float]:
    """Train `name` as the train stage does and score it as evaluate does."""
    from pipeline.ml.classifier import train_classifier
    from pipeline.ml.evaluation import accuracy
    from pipeline.ml.robustness import pgd, rotate, shift
    from pipeline.ml.training import predict_proba

    started = time.perf_counter()
    model, history, metrics = train_classifier(name, params, prepared.splits, prepared.num_classes)
    seconds = time.perf_counter() - started
    x, y = prepared["test"]
    p = params.evaluate
    attacked = pgd(model, x, y, p.robust_epsilon, p.pgd_steps, p.pgd_step_size, params.seed)
    return {
        "test_accuracy": metrics.test_accuracy,
        "shift_accuracy": accuracy(predict_proba(model, shift(x, SHIFT_PIXELS)), y),
        "rotation_accuracy": accuracy(predict_proba(model, rotate(x, ROTATION_DEGREES)), y),
        "pgd_accuracy": accuracy(predict_proba(model, attacked), y),
        "epochs_trained": float(len(history["loss"])),
        "train_seconds": seconds,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per measure over the seeds: mean, min, max and spread (max - min)."""
    summary = {}
    for key in runs[0]:
        values = np.array([run[key] for run in runs])
        low, high = float(values.min()), float(values.max())
        summary[key] = {"mean": float(values.mean()), "min": low, "max": high, "spread": high - low}
    return summary


def choose(results: dict[str, Any], target: float) -> str:
    """The rule in this module's docstring, over candidate -> summary."""

    def mean(candidate: str, measure: str) -> float:
        return float(results[candidate][measure]["mean"])

    reaching = [c for c in results if mean(c, "shift_accuracy") >= target]
    if not reaching:
        return max(results, key=lambda c: mean(c, "shift_accuracy"))
    floor = mean(BASE, "pgd_accuracy") if BASE in results else 0.0
    robust = [c for c in reaching if mean(c, "pgd_accuracy") >= floor]
    return max(
        robust or reaching, key=lambda c: (mean(c, "test_accuracy"), mean(c, "shift_accuracy"))
    )


def table(
    name: str,
    results: dict[str, Any],
    chosen: str,
    title: str = "mean ± spread over the seeds",
    width: int = 38,
    counts: Sequence[str] = (),
) -> str:
    """One row per candidate: its `counts` (whole numbers it holds, as `weights`), then each
    measure's mean ± spread, the epochs trained and the seconds per training."""
    measures = ("test_accuracy", "shift_accuracy", "rotation_accuracy", "pgd_accuracy")
    lines = [
        f"{name}: {title}",
        f"{'candidate':<{width}}"
        + "".join(f"{count:>10}" for count in counts)
        + "".join(f"{m.removesuffix('_accuracy'):>16}" for m in measures)
        + f"{'epochs':>8}{'seconds':>9}",
    ]
    for candidate, summary in results.items():
        cells = "".join(f"{summary[count]:>10}" for count in counts) + "".join(
            f"{summary[m]['mean']:>9.4f} ±{summary[m]['spread']:.3f}" for m in measures
        )
        mark = " <- default" if candidate == chosen else ""
        lines.append(
            f"{candidate:<{width}}{cells}{summary['epochs_trained']['mean']:>8.0f}"
            f"{summary['train_seconds']['mean']:>9.1f}{mark}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        help="measure only these, keeping the others' results from an earlier run's JSON",
    )
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    base = load_params("params.yaml")
    apply(base.reproducibility)  # before TensorFlow's first op, as every stage does
    from pipeline.data.prepared import prepare

    prepared = prepare(base.data, base.seed)
    report: dict[str, Any] = {
        "machine": {**processor(), "python": platform.python_version()},
        "data": {
            "source": base.data.source,
            "split_seed": base.seed,
            **{f"{split}_images": len(y) for split, (_, y) in prepared.splits.items()},
        },
        "seeds": args.seeds,
        "shift_pixels": SHIFT_PIXELS,
        "rotation_degrees": ROTATION_DEGREES,
        "rule": " ".join(__doc__.split("\n\n")[2].split()),
        "models": {},
    }
    if args.candidates and OUTPUT.exists():
        earlier = read_json(OUTPUT)
        if earlier["seeds"] != args.seeds or earlier["data"] != report["data"]:
            raise SystemExit(f"{OUTPUT}: measured on other seeds or data; run every candidate")
        report["models"] = earlier["models"]
        for family in report["models"].values():  # written before candidates held these
            for result in family["candidates"].values():
                result.setdefault("machine", earlier["machine"])
                if "params" not in result:
                    parts = ("augment", "adversarial")
                    result["params"] = {k: result.pop(k) for k in parts if k in result}
    for name in args.models:
        results = report["models"].get(name, {}).get("candidates", {})
        for candidate in args.candidates or list(CANDIDATES):
            runs = []
            for seed in args.seeds:
                raw_copy = yaml.safe_load(yaml.safe_dump(raw))
                params = with_candidate(raw_copy, name, CANDIDATES[candidate], seed)
                runs.append(measure(name, params, prepared))
                print(f"{name} {candidate} seed {seed}: {runs[-1]}", flush=True)
            results[candidate] = {
                "params": CANDIDATES[candidate],
                "machine": report["machine"],  # a partial rerun may run on another machine
                **summarize(runs),
                "runs": runs,
            }
        chosen = choose(results, SHIFT_TARGETS[name])
        report["models"][name] = {
            "shift_target": SHIFT_TARGETS[name],
            "candidates": results,
            "chosen": chosen,
            "chosen_params": CANDIDATES[chosen],
        }
        print(table(name, results, chosen), flush=True)
        write_json(OUTPUT, report)  # after each family: a long search keeps what it measured
    print(f"-> {OUTPUT}")


if __name__ == "__main__":
    main()
