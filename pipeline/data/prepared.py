"""The prepared-data contract between ingest and every later stage: `data/prepared/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.cli import PipelineError, first_line
from pipeline.core.io import atomic_path, hash_arrays, read_json, write_json
from pipeline.core.layout import MANIFEST, PREPARED_DIR, SPLIT_FILE
from pipeline.core.outputs import PREDICTED_COLUMN
from pipeline.core.params import DataParams
from pipeline.data.sources import (
    NPZ_ERRORS,
    SPLITS,
    RawData,
    load_source,
    read_npz,
    scale_pixels,
    stratified_split,
)

MAX_CLASSES = 1000


@dataclass(frozen=True)
class Prepared:
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (x float32 N×H×W×C, y int64)
    manifest: dict[str, Any]

    def __getitem__(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.splits[split]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        height, width, channels = self.manifest["image_shape"]
        return int(height), int(width), int(channels)

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of classes 0, 1, ... (label numbers for data prepared without names)."""
        names = self.manifest.get("class_names") or range(self.num_classes)
        return tuple(str(name) for name in names)


def prepare(data: DataParams, seed: int) -> Prepared:
    """The configured source, scaled to [0, 1] and split stratified: what ingest writes."""
    raw = load_source(data)
    names = class_names(raw, data)
    x = scale_pixels(raw.x, raw.pixel_max)
    splits = stratified_split(x, raw.y, data.val_fraction, data.test_fraction, seed)
    manifest = build_manifest(
        splits,
        source=data.source,
        path=data.path,
        num_classes=len(names),
        class_names=list(names),
        image_size=list(data.image_size) if data.image_size else None,
        color=data.color,
        files=raw.files,
        pixel_max=raw.pixel_max,
        seed=seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
    )
    return Prepared(splits=splits, manifest=manifest)


def class_names(raw: RawData, data: DataParams) -> tuple[str, ...]:
    """The classes, by name: the source's own names (class folders, the digit sets), else
    data.class_names, else the label numbers. How many: data.num_classes when given, else as
    many as there are names, else the highest label + 1. Labels outside that range are left
    for validation to report, naming them."""
    given = raw.class_names or data.class_names
    count = data.num_classes or (len(given) if given else int(raw.y.max()) + 1)
    if given is not None and len(given) != count:
        raise PipelineError(
            f"data.num_classes is {count}, but the data has {len(given)} classes "
            f"({_listed(given)}); set it to {len(given)} or null"
        )
    if count > MAX_CLASSES:
        raise PipelineError(
            f"data: {count} classes, more than the {MAX_CLASSES} the pipeline takes "
            f"(labels go up to {int(raw.y.max())})"
        )
    if data.num_classes is None and given is None:
        # Derived from the labels: a gap means a stray label, not a class with no images.
        missing = sorted(set(range(count)) - {int(label) for label in np.unique(raw.y)})
        if missing:
            absent = _listed(tuple(str(label) for label in missing))
            raise PipelineError(
                f"data: labels go up to {count - 1}, but none is {absent}; set "
                "data.num_classes (validation then names the stray labels) or relabel"
            )
    names = tuple(given or (str(label) for label in range(count)))
    if PREDICTED_COLUMN in names:
        raise PipelineError(
            f"data: a class is named {PREDICTED_COLUMN!r}, the name the served model's table "
            "gives its predicted-class column; rename that class"
        )
    return names


def _listed(names: tuple[str, ...], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names)} in all)" if len(names) > most else "")


def content_hash(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    return hash_arrays(*(array for name in SPLITS for array in splits[name]))


def build_manifest(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], **provenance: Any
) -> dict[str, Any]:
    summary = {}
    for name in SPLITS:
        _x, y = splits[name]
        labels, counts = np.unique(y, return_counts=True)
        summary[name] = {
            "count": len(y),
            "class_counts": {str(label): int(n) for label, n in zip(labels, counts, strict=True)},
        }
    return {
        **provenance,
        "image_shape": list(splits["train"][0].shape[1:]),
        "splits": summary,
        "content_hash": content_hash(splits),
    }


def write_prepared(prepared: Prepared, folder: Path = PREPARED_DIR) -> None:
    """Write all splits and the manifest, replacing the folder atomically."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name in SPLITS:
            x, y = prepared[name]
            np.savez(tmp / SPLIT_FILE.format(split=name), x=x, y=y)
        write_json(tmp / MANIFEST, prepared.manifest)


def load_prepared(folder: Path = PREPARED_DIR) -> Prepared:
    folder = Path(folder)
    path = folder / MANIFEST  # the file being read, for the error message
    try:
        manifest = read_json(path)
        if not isinstance(manifest, dict):
            raise PipelineError(f"{path}: not a manifest (a JSON object)")
        splits = {}
        for name in SPLITS:
            path = folder / SPLIT_FILE.format(split=name)
            splits[name] = read_npz(path)
    except FileNotFoundError as error:
        raise PipelineError(f"{error.filename}: missing; run the ingest stage first") from None
    except (*NPZ_ERRORS, RecursionError) as error:  # RecursionError: JSON nested too deeply
        raise PipelineError(f"{path}: unreadable prepared data ({first_line(error)})") from None
    if content_hash(splits) != manifest.get("content_hash"):
        raise PipelineError(f"{folder}: arrays do not match the manifest's content hash")
    return Prepared(splits=splits, manifest=manifest)
