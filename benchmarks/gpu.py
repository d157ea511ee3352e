"""The train stage on a GPU, on MNIST-shaped data: prints the CNN's training throughput.

For a machine with a GPU (never needed by the tests). In a throw-away copy of the project it
writes MNIST's four IDX files (the embedded digits upscaled to 28×28 and repeated to 60,000
training images), then runs `dvc repro train@cnn` with `distribute: mirrored` (every GPU) and
mixed precision, and prints samples per second from the stage's own timing. Under 5 minutes on
one data-centre GPU with the defaults.

    python -m benchmarks.gpu [--images 60000] [--epochs 3] [--batch-size 256]

TensorFlow must see the GPU: in the environment, replace tensorflow-cpu by the CUDA build of the
same version (`pip install 'tensorflow[and-cuda]==2.21.0'`). Writes reports/benchmarks/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core.io import write_json
from pipeline.data.sources import load_digits
from tests.conftest import REPO, write_idx
from tests.e2e import copy_project, run, update_params

import tensorflow as tf  # isort: skip  (after the package import above)

OUTPUT = REPO / "reports/benchmarks/gpu.json"


def mnist_shaped(folder: Path, images: int) -> None:
    """Digits upscaled to 28×28 uint8, repeated to `images` training and images/6 test images,
    each copy with its own faint noise: validation rejects identical images across splits."""
    raw = load_digits()
    x = tf.image.resize(raw.x / raw.pixel_max, (28, 28)).numpy()[..., 0] * 230
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, count in (("train", images), ("t10k", images // 6)):
        picked = np.resize(np.arange(len(x)), count)
        noisy = x[picked] + rng.integers(0, 25, size=(count, 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte", np.clip(noisy, 0, 255).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", raw.y[picked].astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="per GPU")
    parser.add_argument("--cpu", action="store_true", help="run without a GPU: checks the script")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.cpu:
        raise SystemExit(
            "gpu: TensorFlow sees no GPU; install tensorflow[and-cuda]==2.21.0 in place of "
            "tensorflow-cpu"
        )
    with tempfile.TemporaryDirectory() as folder:
        project = copy_project(Path(folder))
        mnist_shaped(project / "data/mnist", args.images)
        common = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "early_stopping_patience": args.epochs,
            "distribute": "mirrored",
            "mixed_precision": True,
        }
        update_params(
            project,
            {
                "data": {"source": "idx", "path": "data/mnist"},
                "validate": {"max_rows_per_split": 10_000_000},
                "train": {"common": common},
            },
        )
        started = time.perf_counter()
        result = run(project, "dvc", "repro", "train@cnn", timeout=1800)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"gpu: dvc repro failed:\n{result.stderr[-3000:]}")
        print(result.stdout[-2000:])
        metrics = json.loads((project / "reports/train/cnn.json").read_text())
        timing = json.loads((project / layout.timing_file("train@cnn")).read_text())
        with np.load(project / "data/prepared/train.npz") as train:
            examples = len(train["y"])
    compute = timing["seconds"]["compute"]
    rate = examples * metrics["epochs_trained"] / compute
    result_row = {
        "gpus": [gpu.name for gpu in gpus],
        "replicas": metrics["replicas"],
        "global_batch_size": metrics["global_batch_size"],
        "train_examples": examples,
        "epochs": metrics["epochs_trained"],
        "compute_seconds": compute,
        "samples_per_second": rate,
        "test_accuracy": metrics["test_accuracy"],
        "whole_repro_seconds": seconds,
    }
    print(json.dumps(result_row, indent=2))
    write_json(OUTPUT, result_row)


if __name__ == "__main__":
    main()
