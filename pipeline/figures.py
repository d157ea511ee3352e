"""PNG figures written without a display (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import atomic_path


def image_grid(images: np.ndarray, scale: int = 4, pad: int = 1) -> np.ndarray:
    """Rows×columns of H×W×1 images in [0, 1] as one grey image, each pixel scale×scale."""
    rows, cols, height, width = images.shape[:4]
    tile_h, tile_w = height * scale + pad, width * scale + pad
    grid = np.ones((rows * tile_h + pad, cols * tile_w + pad), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            tile = np.kron(np.clip(images[r, c, ..., 0], 0, 1), np.ones((scale, scale)))
            top, left = pad + r * tile_h, pad + c * tile_w
            grid[top : top + height * scale, left : left + width * scale] = tile
    return grid


def save_grid_png(path: Path, images: np.ndarray, scale: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        plt.imsave(tmp, image_grid(images, scale), cmap="gray", vmin=0.0, vmax=1.0, format="png")


def save_tradeoff_png(path: Path, points: list[dict], title: str) -> None:
    """Size (gzipped KiB, log scale) against test accuracy, a labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (size, accuracy), names in coincident(points).items():
        axes.scatter(size, accuracy, s=36)
        axes.annotate(
            ", ".join(names),
            (size, accuracy),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    axes.set_xscale("log")
    axes.set_xlabel("size, gzipped (KiB, log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)


def coincident(points: list[dict], tolerance: float = 0.05) -> dict[tuple[float, float], list[str]]:
    """Variants at the same accuracy and within `tolerance` (relative) in size share one
    labelled point, so their names do not print over each other."""
    groups: dict[tuple[float, float], list[str]] = {}
    for point in sorted(points, key=lambda p: p["size_gzip_kib"]):
        size, accuracy = point["size_gzip_kib"], point["accuracy"]
        for key, names in groups.items():
            if key[1] == accuracy and abs(size - key[0]) <= tolerance * key[0]:
                names.append(point["variant"])
                break
        else:
            groups[(size, accuracy)] = [point["variant"]]
    return groups
