"""The floor under the train stages: one plain Keras process that trains and scores the same three
classifiers, with the same params, data, seed and early stopping, and does nothing else: no DVC,
no validation, no MLflow, no files written. `benchmarks.pipeline` times it beside the stages.

    python -m benchmarks.floor            # in a project whose data/prepared/ exists
"""

from __future__ import annotations

import json
import time

import numpy as np

from pipeline.core.params import MODEL_NAMES, load_params
from pipeline.data.prepared import PREPARED_DIR

# The package import sets TF_USE_LEGACY_KERAS before TensorFlow loads, as it does for the stages.
from pipeline.ml.models import build_classifier
from pipeline.ml.training import compile_classifier, fit_classifier, make_deterministic


def main() -> None:
    params = load_params("params.yaml")
    common = params.train.common
    splits = {}
    for split in ("train", "val", "test"):
        with np.load(PREPARED_DIR / f"{split}.npz") as archive:
            splits[split] = (archive["x"], archive["y"])
    num_classes = int(splits["train"][1].max()) + 1
    results = {}
    for name in MODEL_NAMES:
        block = params.train.model(name)
        if block.adversarial.method != "none" or common.loss != "sparse_categorical_crossentropy":
            raise SystemExit(f"floor: {name}: only plain training with integer labels is covered")
        started = time.perf_counter()
        make_deterministic(params.seed)
        model = build_classifier(name, params.train, splits["train"][0].shape[1:], num_classes)
        compile_classifier(model, block.optimizer, common)
        # The same fit as the stage's (tf.data input, early stopping): pure compute.
        history = fit_classifier(
            model, splits["train"], splits["val"], common, num_classes, verbose=0
        )
        accuracy = {
            split: float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(1) == y))
            for split, (x, y) in splits.items()
        }
        results[name] = {
            "test_accuracy": accuracy["test"],
            "epochs_trained": len(history["loss"]),
            "seconds": time.perf_counter() - started,
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
