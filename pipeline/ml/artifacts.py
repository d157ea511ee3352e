"""Saved Keras models: written so the same weights give the same bytes, loaded safely."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import tf_keras as keras

from pipeline.core.cli import PipelineError


def save_keras(model: keras.Model, path: Path) -> None:
    """`model.save(path)` without what varies from run to run for the same model: Keras stamps
    the save time into metadata.json and onto every zip entry, and numbers the objects layers
    share (`shared_object_id` in config.json) by their memory addresses. The archive is rewritten
    with fixed entry times, no `date_saved` (loading never reads it; the run's time is in MLflow
    and DVC), and shared objects numbered in order of appearance (loading only matches equal
    numbers). The same weights then give the same bytes, and the same gzip size."""
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, content in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(content)
                metadata.pop("date_saved", None)
                content = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                content = json.dumps(_renumber_shared_objects(json.loads(content), {})).encode()
            stable = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            stable.compress_type, stable.external_attr = info.compress_type, info.external_attr
            archive.writestr(stable, content)


def _renumber_shared_objects(config: Any, numbers: dict[Any, int]) -> Any:
    if isinstance(config, dict):
        return {
            key: numbers.setdefault(value, len(numbers) + 1)
            if key == "shared_object_id"
            else _renumber_shared_objects(value, numbers)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_renumber_shared_objects(item, numbers) for item in config]
    return config


def load_keras(path: Path) -> keras.Model:
    """Load a Keras model file in safe mode (no arbitrary code); one-line error if unusable."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: model file not found; run the stage that makes it")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{path}: cannot load the model ({type(error).__name__})") from None
