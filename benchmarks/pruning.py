"""The search behind `compress`'s pruning fine-tuning defaults: each candidate below compresses the
three families exactly as the compress stage does (every variant, measured through LiteRT and
checked against `targets.compress`) under seeds 42, 43 and 44, each seed with its own split and
its own trained models, as in benchmarks/seeds.py. Prints each target's mean and spread per
candidate, picks the default by the rule below, and writes reports/benchmarks/pruning.json, which
`tests/test_params.py` holds params.yaml's `compress` section to.

    python -m benchmarks.pruning [--seeds 42 43 44]

The rule: the candidate that meets the most compress targets by their mean over the seeds, over
the three families; among equals, the lowest accuracy loss of the pruned int8 model (points
against the float TFLite model), its mean summed over the families.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.seeds import summarize
from pipeline.core.io import write_json
from pipeline.core.outputs import Check
from pipeline.core.params import MODEL_NAMES, load_params, parse_params
from pipeline.core.provenance import processor
from pipeline.core.reproducibility import apply

OUTPUT = Path("reports/benchmarks/pruning.json")
SEEDS = (42, 43, 44)
# Each candidate replaces these `compress` params; the sparsity, its schedule's shape and the
# epoch budget stay params.yaml's.
CANDIDATES: dict[str, dict[str, float]] = {
    "learning rate 2.5e-4": {"prune_learning_rate": 0.00025},
    "learning rate 5e-4": {"prune_learning_rate": 0.0005},
    "learning rate 1e-3": {"prune_learning_rate": 0.001},
    "learning rate 2e-3": {"prune_learning_rate": 0.002},
}
PRUNED_INT8_LOSS = "pruned_int8_loss_points_vs_float_tflite"


def compress_checks(raw: dict[str, Any], seed: int, folder: Path) -> dict[str, dict[str, Check]]:
    """candidate -> "<family>.<target>" -> check, for one seed: the split prepared and every
    family trained once, as ingest and train do, then compressed under each candidate."""
    from pipeline.data.prepared import prepare
    from pipeline.ml.artifacts import load_keras, save_keras
    from pipeline.ml.classifier import train_classifier
    from pipeline.stages.compress import compress

    params = parse_params({**raw, "seed": seed})
    prepared = prepare(params.data, seed)
    checks: dict[str, dict[str, Check]] = {candidate: {} for candidate in CANDIDATES}
    for name in MODEL_NAMES:
        trained, _, _ = train_classifier(name, params, prepared.splits, prepared.num_classes)
        keras_file = folder / f"{name}-{seed}.keras"
        save_keras(trained, keras_file)
        model = load_keras(keras_file)  # as the compress stage reads it
        for candidate, update in CANDIDATES.items():
            compress_params = params.compress.model_copy(update=update)
            candidate_params = params.model_copy(update={"compress": compress_params})
            started = time.perf_counter()
            _, report, _ = compress(name, model, candidate_params, prepared, keras_file)
            checks[candidate] |= {f"{name}.{k}": c for k, c in report.targets.items()}
            print(
                f"seed {seed} {name} {candidate}: {time.perf_counter() - started:.0f} s, "
                f"{PRUNED_INT8_LOSS} {report.targets[PRUNED_INT8_LOSS].value:.3f}",
                flush=True,
            )
    return checks


def choose(results: dict[str, dict[str, Any]]) -> str:
    """The rule in this module's docstring, over candidate -> target -> summary."""

    def ranking(candidate: str) -> tuple[int, float]:
        targets = results[candidate]
        met = sum(bool(t["met_by_mean"]) for t in targets.values())
        losses = [t["mean"] for key, t in targets.items() if key.endswith(f".{PRUNED_INT8_LOSS}")]
        return met, -sum(losses)

    return max(results, key=ranking)


def table(results: dict[str, dict[str, Any]], chosen: str) -> str:
    keys = list(next(iter(results.values())))
    lines = [
        "mean ± spread over the seeds (loss in points, lower is better); * met by mean",
        f"{'target':<52}" + "".join(f"{c:>24}" for c in results),
    ]
    for key in keys:
        cells = []
        for summary in results.values():
            t = summary[key]
            mark = "*" if t["met_by_mean"] else " "
            cells.append(f"{t['mean']:>14.3f} ±{t['spread']:.3f}{mark}")
        lines.append(f"{key:<52}" + "".join(f"{cell:>24}" for cell in cells))
    met = {c: sum(bool(t["met_by_mean"]) for t in s.values()) for c, s in results.items()}
    lines.append(f"{'targets met by mean':<52}" + "".join(f"{m:>24}" for m in met.values()))
    lines.append(f"default: {chosen}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    apply(load_params("params.yaml").reproducibility)  # before TensorFlow's first op
    started = time.perf_counter()
    per_seed: dict[int, dict[str, dict[str, Check]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as folder:
        for seed in args.seeds:
            per_seed[seed] = compress_checks(raw, seed, Path(folder))
    results = {
        candidate: summarize({seed: ({}, checks[candidate]) for seed, checks in per_seed.items()})[
            "targets"
        ]
        for candidate in CANDIDATES
    }
    chosen = choose(results)
    print(table(results, chosen))
    write_json(
        OUTPUT,
        {
            "machine": {**processor(), "python": platform.python_version()},
            "seeds": args.seeds,
            "seconds": time.perf_counter() - started,
            "rule": " ".join(__doc__.split("\n\n")[2].split()),
            "candidates": {
                candidate: {"params": CANDIDATES[candidate], "targets": results[candidate]}
                for candidate in CANDIDATES
            },
            "chosen": chosen,
            "chosen_params": CANDIDATES[chosen],
        },
    )
    print(f"-> {OUTPUT}")


if __name__ == "__main__":
    main()
