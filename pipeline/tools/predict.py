"""predict: class probabilities for new images from a trained model, as a CSV.

    python -m pipeline predict PATH [--model cnn | --registered NAME@ALIAS] [--tflite VARIANT]
                                    [--out predictions.csv]

PATH is an image file, a folder of image files (searched recursively) or an NPZ. Each image is
prepared exactly as ingest prepared the model's training images (the model's inputs.json says
how), and gets one row: the file, the predicted class's name and every class's probability.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout, tracking
from pipeline.core.cli import PipelineError, run_stage, stage_parser
from pipeline.core.io import atomic_path
from pipeline.core.outputs import ModelInputs
from pipeline.core.params import MODEL_NAMES
from pipeline.data.inputs import model_inputs

Predict = Callable[[np.ndarray], np.ndarray]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("predict", __doc__ or "")
    parser.add_argument("path", type=Path, help="an image file, a folder of images or an NPZ")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--model", choices=MODEL_NAMES, default="cnn", help="a local model")
    chosen.add_argument("--registered", metavar="NAME@ALIAS", help="a registry model version")
    parser.add_argument("--tflite", metavar="VARIANT", help="a compressed variant (int8, ...)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    args = parser.parse_args(argv)
    if args.registered and args.tflite:
        raise PipelineError("--tflite picks a local model's compressed variant, not --registered")

    predict, spec, described = load_predictor(args.model, args.registered, args.tflite)
    names, x = model_inputs(args.path, spec)
    probabilities = predict(x)
    with atomic_path(args.out) as tmp:
        tmp.write_text(predictions_csv(names, probabilities, spec.class_names), encoding="utf-8")
    print(f"predict: {len(names)} images, {described} -> {args.out}")


def load_predictor(
    name: str, registered: str | None, variant: str | None
) -> tuple[Predict, ModelInputs, str]:
    """The model's predict function, its inputs.json and a description for the summary line."""
    from pipeline.ml.training import predict_proba  # TensorFlow only once the arguments are sane

    if registered:
        model_name, _, alias = registered.partition("@")
        if not model_name or not alias:
            raise PipelineError(f"--registered: expected NAME@ALIAS, got {registered!r}")
        loaded, inputs = tracking.load_registered(model_name, alias, layout.INPUTS_FILE)
        spec = ModelInputs.model_validate(inputs)
        return lambda x: predict_proba(loaded, x), spec, f"registered {registered}"
    spec = ModelInputs.of(layout.model_dir(name))
    if variant:
        from pipeline.ml.inference import load_tflite

        path = layout.compressed_dir(name) / f"{variant}.tflite"
        if not path.is_file():
            raise PipelineError(f"{path}: no such compressed variant; run the compress stage")
        return load_tflite(path).predict, spec, f"{name} {variant} ({path})"
    from pipeline.ml.artifacts import load_keras

    model: Any = load_keras(layout.model_file(name))
    return lambda x: predict_proba(model, x), spec, f"{name} ({layout.model_file(name)})"


def predictions_csv(names: list[str], probabilities: np.ndarray, classes: list[str]) -> str:
    """One row per image: file, predicted (a class name), then p_<class> for every class."""
    if probabilities.shape != (len(names), len(classes)):
        raise PipelineError(
            f"the model returns {probabilities.shape[1]} scores per image, "
            f"its inputs.json names {len(classes)} classes"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "predicted", *(f"p_{name}" for name in classes)])
    for name, row in zip(names, probabilities, strict=True):
        writer.writerow([name, classes[int(np.argmax(row))], *(f"{p:.6g}" for p in row)])
    return buffer.getvalue()


if __name__ == "__main__":
    run_stage("predict", main)
