"""Infra validation, as TFX's InfraValidator does it: before a candidate is blessed, load it the
way it will be used and check that it answers as the model evaluate scored.

A fresh process with a clean environment (nothing inherited from the pipeline's) loads the
registered version through MLflow's pyfunc loader and the lineage's int8 TFLite file through
LiteRT (`pipeline.tools.canary`); both answer a canary batch of test images. The served
probabilities must match the Keras model file's within `max_served_difference`; the int8
labels must equal the Keras model's on at least `min_int8_agreement` of the images.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline.core import tracking
from pipeline.core.io import read_json
from pipeline.core.layout import model_file, tflite_artifact
from pipeline.core.outputs import InfraValidation
from pipeline.core.params import PromoteParams

INT8 = "int8"  # compress's full-integer variant: int8 in and out, as an accelerator runs it
SOURCE_ROOT = Path(pipeline.__file__).resolve().parent.parent  # where `pipeline` imports from


def keras_probabilities(family: str, images: np.ndarray) -> np.ndarray:
    """The model file evaluate scored (the lineage run is found by its digest)."""
    from pipeline.ml.artifacts import load_keras

    model = load_keras(model_file(family))
    return np.asarray(model.predict(images, verbose=0), np.float64)


def clean_environment(home: Path) -> dict[str, str]:
    """Only what a process needs to start: this interpreter on PATH, an empty home."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home)}


def ask_fresh_process(
    model_uri: str, tflite: tuple[str, str] | None, images: np.ndarray, timeout_s: int
) -> tuple[dict[str, Any], float]:
    """The canary program's answer, run in a fresh process; and its whole run's seconds."""
    with tempfile.TemporaryDirectory(prefix="canary-") as folder:
        where = Path(folder)
        np.save(where / "images.npy", images)
        command = [
            sys.executable,
            "-m",
            "pipeline.tools.canary",
            "--tracking-uri",
            tracking.tracking_uri(),
            "--model-uri",
            model_uri,
            "--images",
            str(where / "images.npy"),
            "--out",
            str(where / "answer.json"),
        ]
        if tflite is not None:
            command += ["--tflite-run", tflite[0], "--tflite-artifact", tflite[1]]
        home = where / "home"
        home.mkdir()
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                cwd=SOURCE_ROOT,
                env=clean_environment(home),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {timeout_s} s"}, time.perf_counter() - started
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not (where / "answer.json").is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"exited {done.returncode}: {last[:500]}"}, seconds
        return read_json(where / "answer.json"), seconds


def judge(
    reference: np.ndarray, answer: dict[str, Any], p: PromoteParams
) -> tuple[float | None, float | None, list[str]]:
    """The largest served difference, the int8 agreement, and what fails, in words."""
    if "error" in answer:
        return None, None, [f"the fresh process failed: {answer['error']}"]
    failures: list[str] = []
    difference = agreement = None
    served = answer.get("served_probabilities")
    if served is None:
        failures.append(f"the registered model did not load or answer: {answer['served_error']}")
    elif np.shape(served) != reference.shape:
        failures.append(f"the registered model answered {np.shape(served)}, not {reference.shape}")
    else:
        difference = float(np.max(np.abs(np.asarray(served) - reference)))
        if difference > p.max_served_difference:
            failures.append(
                f"served probabilities differ from the Keras model's by up to {difference:.3g} "
                f"(> {p.max_served_difference:g})"
            )
    labels = answer.get("tflite_labels")
    if answer.get("tflite_error"):
        failures.append(f"the int8 TFLite file did not load or answer: {answer['tflite_error']}")
    elif labels is None:
        failures.append("no int8 TFLite file in the lineage (run the compress stage)")
    elif len(labels) != len(reference):
        failures.append(f"the int8 model answered {len(labels)} images, not {len(reference)}")
    else:
        agreement = float(np.mean(np.asarray(labels) == reference.argmax(axis=1)))
        if agreement < p.min_int8_agreement:
            failures.append(
                f"int8 labels agree with the Keras model's on {agreement:.3f} of the canary "
                f"images (< {p.min_int8_agreement:g})"
            )
    return difference, agreement, failures


def validate_infra(
    family: str, model_uri: str, lineage_run_id: str, images: np.ndarray, p: PromoteParams
) -> InfraValidation:
    """`images`: the canary batch, a few prepared test images."""
    reference = keras_probabilities(family, images)
    compress_run = tracking.latest_stage_run(lineage_run_id, "compress")
    artifact = tflite_artifact(family, INT8)
    tflite = (compress_run, artifact) if compress_run else None
    answer, seconds = ask_fresh_process(model_uri, tflite, images, p.canary_timeout_s)
    difference, agreement, failures = judge(reference, answer, p)
    return InfraValidation(
        passed=not failures,
        canary_images=len(images),
        model_uri=model_uri,
        tflite_artifact=f"runs:/{compress_run}/{artifact}" if compress_run else None,
        served_max_difference=difference,
        int8_agreement=agreement,
        seconds={**answer.get("seconds", {}), "fresh_process": seconds},
        environment=answer.get("environment", []),
        reasons=failures or [summary(len(images), difference, agreement, seconds)],
    )


def summary(images: int, difference: float | None, agreement: float | None, s: float) -> str:
    return (
        f"infra validation: loaded in a fresh process, {images} canary images: served "
        f"within {difference:.2g} of the Keras model, int8 labels agree on {agreement:.3f} "
        f"({s:.1f} s)"
    )
