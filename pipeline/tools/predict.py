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
from pipeline.core.cli import PipelineError, first_line, run_stage, stage_parser
from pipeline.core.io import atomic_path
from pipeline.core.outputs import ModelInputs
from pipeline.core.params import MODEL_NAMES
from pipeline.core.stage import apply_reproducibility
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

    # The arithmetic evaluate scored the model with: a label near a tie must come out the same.
    apply_reproducibility(args.params)
    spec = model_spec(args.model, args.registered)
    names, x = model_inputs(args.path, spec)  # bad images fail before TensorFlow loads
    predict, described = load_predictor(args.model, args.registered, args.tflite)
    probabilities = predict(x)
    with atomic_path(args.out) as tmp:
        tmp.write_text(predictions_csv(names, probabilities, spec.class_names), encoding="utf-8")
    print(f"predict: {len(names)} images, {described} -> {args.out}")


def registered_name(registered: str) -> tuple[str, str]:
    model_name, _, alias = registered.partition("@")
    if not model_name or not alias:
        raise PipelineError(f"--registered: expected NAME@ALIAS, got {registered!r}")
    return model_name, alias


def model_spec(name: str, registered: str | None) -> ModelInputs:
    """The model's inputs.json: beside the local model, or on the registered version's run."""
    if not registered:
        return ModelInputs.of(layout.model_dir(name))
    model_name, alias = registered_name(registered)
    inputs = tracking.registered_inputs(model_name, alias, layout.INPUTS_FILE)
    try:
        return ModelInputs.model_validate(inputs)
    except ValueError as error:
        raise PipelineError(
            f"{registered}: its {layout.INPUTS_FILE} is not a ModelInputs ({first_line(error)})"
        ) from None


def load_predictor(name: str, registered: str | None, variant: str | None) -> tuple[Predict, str]:
    """The model's predict function and a description for the summary line."""
    from pipeline.ml.training import predict_proba  # TensorFlow, once the inputs are read

    if registered:
        loaded = tracking.load_registered(*registered_name(registered))
        return lambda x: predict_proba(loaded, x), f"registered {registered}"
    if variant:
        from pipeline.ml.inference import load_tflite

        path = layout.compressed_dir(name) / f"{variant}.tflite"
        if not path.is_file():
            raise PipelineError(
                f"{path}: no such variant (reports/compress/{name}.json lists those that "
                "converted and run, and why the others did not)"
            )
        return load_tflite(path).predict, f"{name} {variant} ({path})"
    from pipeline.ml.artifacts import load_keras

    model: Any = load_keras(layout.model_file(name))
    return lambda x: predict_proba(model, x), f"{name} ({layout.model_file(name)})"


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
