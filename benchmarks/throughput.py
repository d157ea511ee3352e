"""Training throughput: the pipeline's code against a plain Keras script, side by side.

The same CNN (params.yaml's `train.cnn`), the same data and the same number of steps, trained
twice per repeat, in alternating order: once through the pipeline's training code (its tf.data
input pipeline and `fit_classifier`, early stopping and validation included) and once as the
plain script a Keras user writes (`model.fit` on NumPy arrays, validation included). Samples per
second count the epochs after the first, which traces the graph; the median over repeats is
reported. The pipeline's code must keep at least 95% of the plain script's throughput.

    python -m benchmarks.throughput [--repeats 3] [--epochs 6] [--sizes 8 28]

Size 8 is the embedded digits as the pipeline trains them; 28 is the same images upscaled to
MNIST's shape. Writes reports/benchmarks/throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.io import write_json
from pipeline.core.params import Params, load_params

# The package import sets TF_USE_LEGACY_KERAS before TensorFlow loads, as it does for the stages.
from pipeline.data.sources import load_digits, scale_pixels, stratified_split
from pipeline.ml.models import build_classifier
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic
from tests.conftest import REPO

import tensorflow as tf  # isort: skip  (after the package import above)
import tf_keras as keras  # isort: skip

OUTPUT = REPO / "reports/benchmarks/throughput.json"
MIN_RATIO = 0.95
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def digits(size: int, seed: int) -> Splits:
    raw = load_digits()
    x = scale_pixels(raw.x, raw.pixel_max)
    if size != x.shape[1]:
        x = tf.image.resize(x, (size, size)).numpy()
    return stratified_split(x, raw.y, 0.1, 0.2, seed)


def through_pipeline(params: Params, data: Splits, clock: EpochClock) -> None:
    common = params.train.common
    model = build_classifier("cnn", params.train, data["train"][0].shape[1:], 10)
    compile_classifier(model, params.train.cnn.optimizer, common)
    fit_classifier(model, data["train"], data["val"], common, 10, callbacks=[clock], verbose=0)


def plain_keras(params: Params, data: Splits, clock: EpochClock) -> None:
    common = params.train.common
    model = build_classifier("cnn", params.train, data["train"][0].shape[1:], 10)
    model.compile(
        optimizer=keras.optimizers.Adam(params.train.cnn.optimizer.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        *data["train"],
        batch_size=common.batch_size,
        epochs=common.epochs,
        validation_data=data["val"],
        shuffle=True,
        callbacks=[clock],
        verbose=0,
    )


def samples_per_second(
    train: Callable[[Params, Splits, EpochClock], None], params: Params, data: Splits
) -> float:
    make_deterministic(params.seed)
    clock = EpochClock()
    train(params, data, clock)
    return len(data["train"][1]) * len(clock.seconds[1:]) / sum(clock.seconds[1:])


def measure(params: Params, size: int, repeats: int) -> dict[str, Any]:
    data = digits(size, params.seed)
    rates: dict[str, list[float]] = {"pipeline": [], "plain_keras": []}
    runners = {"pipeline": through_pipeline, "plain_keras": plain_keras}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            rates[name].append(samples_per_second(runners[name], params, data))
    pipeline, plain = (statistics.median(rates[k]) for k in ("pipeline", "plain_keras"))
    steps = params.train.common.epochs * -(-len(data["train"][1]) // params.train.common.batch_size)
    return {
        "image_size": size,
        "train_examples": len(data["train"][1]),
        "steps": steps,
        "samples_per_second": {"pipeline": pipeline, "plain_keras": plain},
        "all_runs": rates,
        "ratio": pipeline / plain,
        "within_5_percent": pipeline / plain >= MIN_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 28])
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    # A fixed number of steps: every epoch runs, early stopping never triggers.
    common = params.train.common.model_copy(
        update={"epochs": args.epochs, "early_stopping_patience": args.epochs}
    )
    params = params.model_copy(update={"train": params.train.model_copy(update={"common": common})})
    results = [measure(params, size, args.repeats) for size in args.sizes]
    print(f"{'image':>7} {'steps':>6} {'pipeline/s':>11} {'plain Keras/s':>14} {'ratio':>6}  ok")
    for r in results:
        rate = r["samples_per_second"]
        print(
            f"{r['image_size']:>5}px {r['steps']:>6} {rate['pipeline']:>11.0f} "
            f"{rate['plain_keras']:>14.0f} {r['ratio']:>6.3f}  {r['within_5_percent']}"
        )
    write_json(
        OUTPUT,
        {
            "cnn": params.train.cnn.model_dump(),
            "batch_size": params.train.common.batch_size,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "min_ratio": MIN_RATIO,
            "results": results,
        },
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
