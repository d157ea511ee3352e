"""canary: load a registered model and a TFLite file the way they will be served, and answer a
batch of images; the fresh process that promote's infra validation starts.

    python -m pipeline.tools.canary --tracking-uri URI --model-uri models:/<name>/<version>
        [--tflite-run RUN_ID --tflite-artifact compress/<name>/int8.tflite]
        --images canary.npy --out answer.json

Writes `answer.json`: the served probabilities, the TFLite labels, the seconds each load and
prediction took, the names of the environment variables this process saw, and, for whatever
failed, the error in one line. A failure to load is the
finding this process exists to make, so it is written down rather than raised.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import write_json
from pipeline.core.outputs import PREDICTED_COLUMN

# Before MLflow sets any: what this process started with, and what the package itself set.
STARTED_WITH = sorted(os.environ)


def served_probabilities(tracking_uri: str, model_uri: str, images: np.ndarray) -> np.ndarray:
    """The registered model through MLflow's pyfunc loader, as a server would call it."""
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    table: Any = model.predict(images)
    if hasattr(table, "drop"):  # a NamedClassifier's table: the class name, then each class
        table = table.drop(columns=[PREDICTED_COLUMN], errors="ignore").to_numpy()
    return np.asarray(table, np.float64)


def tflite_labels(tracking_uri: str, run_id: str, artifact: str, images: np.ndarray) -> np.ndarray:
    """The lineage's TFLite file, downloaded from its MLflow run, through LiteRT."""
    import mlflow.artifacts

    from pipeline.ml.inference import TFLiteModel

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact, tracking_uri=tracking_uri
    )
    return TFLiteModel(Path(path).read_bytes()).predict(images).argmax(axis=1)


def attempt(call: Callable[[], np.ndarray]) -> tuple[list[Any] | None, str | None, float]:
    """The answer as a list, or the error in one line; and the seconds it took."""
    started = time.perf_counter()
    try:
        answer = call().tolist()
    except Exception as error:  # any failure to load or answer is the result
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"{type(error).__name__}: {first}"[:500], time.perf_counter() - started
    return answer, None, time.perf_counter() - started


def answer(args: argparse.Namespace) -> dict[str, Any]:
    images = np.load(args.images)
    served, served_error, served_s = attempt(
        lambda: served_probabilities(args.tracking_uri, args.model_uri, images)
    )
    labels, tflite_error, tflite_s = None, None, 0.0
    if args.tflite_run:
        labels, tflite_error, tflite_s = attempt(
            lambda: tflite_labels(args.tracking_uri, args.tflite_run, args.tflite_artifact, images)
        )
    return {
        "served_probabilities": served,
        "served_error": served_error,
        "tflite_labels": labels,
        "tflite_error": tflite_error,
        "seconds": {"served_load_predict": served_s, "tflite_load_predict": tflite_s},
        "environment": STARTED_WITH,  # names only: values may be secrets
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.canary", description=__doc__)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--tflite-run")
    parser.add_argument("--tflite-artifact")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    write_json(args.out, answer(args))


if __name__ == "__main__":
    main()
