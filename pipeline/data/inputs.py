"""New images for a trained model: files, folders or an NPZ, prepared exactly as ingest prepared
the model's training images (the same conversion, size and scale functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.cli import PipelineError
from pipeline.core.outputs import ModelInputs
from pipeline.data import images
from pipeline.data.sources import conform, load_npz, scale_pixels


def model_inputs(path: Path, spec: ModelInputs) -> tuple[list[str], np.ndarray]:
    """(a name per image, float32 N×H×W×C in [0, 1]) for an image file, a folder of image files
    (searched recursively, hidden ones skipped) or an NPZ (named `file#index`)."""
    path = Path(path)
    if path.suffix.lower() == ".npz" and path.is_file():
        return npz_inputs(path, spec)
    if path.is_dir():
        files = [f for f in images.walk(path) if f.suffix.lower() in images.IMAGE_SUFFIXES]
        if not files:
            raise PipelineError(f"{path}: no image files (PNG, JPEG, BMP, GIF, TIFF, WebP)")
    elif path.is_file():
        files = [path]
    else:
        raise PipelineError(f"{path}: no such file or folder")
    height, width, channels = spec.image_shape
    pixels = []
    for file in files:
        array = images.to_array(file, channels, spec.image_size)
        if array.shape[:2] != (height, width):
            raise PipelineError(_size_error(file, array.shape[:2], spec))
        pixels.append(array)
    return [str(file) for file in files], scale_pixels(np.stack(pixels), 255.0)


def npz_inputs(path: Path, spec: ModelInputs) -> tuple[list[str], np.ndarray]:
    raw = load_npz(path)
    height, width, channels = spec.image_shape
    x = conform(raw.x, "grayscale" if channels == 1 else "rgb", spec.image_size)
    if x.shape[1:3] != (height, width):
        raise PipelineError(_size_error(path, x.shape[1:3], spec))
    return [f"{path}#{i}" for i in range(len(x))], scale_pixels(x, raw.pixel_max)


def _size_error(path: Path, size: tuple[int, ...], spec: ModelInputs) -> str:
    height, width, _ = spec.image_shape
    return (
        f"{path}: images are {size[0]}×{size[1]} (H×W), the model takes {height}×{width} "
        "(trained without data.image_size, so images are not resized)"
    )
