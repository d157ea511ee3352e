"""PNG figures written without a display (matplotlib's Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import atomic_path


def image_grid(images: np.ndarray, scale: int = 4, pad: int = 1) -> np.ndarray:
    """Rows×columns of H×W×C images in [0, 1] as one H'×W'×C image, each pixel scale×scale,
    on a white background."""
    rows, cols, height, width, channels = images.shape
    tile_h, tile_w = height * scale + pad, width * scale + pad
    grid = np.ones((rows * tile_h + pad, cols * tile_w + pad, channels), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            tile = np.clip(images[r, c], 0, 1).repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = pad + r * tile_h, pad + c * tile_w
            grid[top : top + height * scale, left : left + width * scale] = tile
    return grid


def displayable(image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """An H×W×C image in [0, 1] as imshow/imsave take it: grey maps through the grey colour
    map, colour (C = 3) shows as RGB."""
    if image.shape[-1] == 1:
        return image[..., 0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return np.clip(image, 0, 1), {}


def save_grid_png(path: Path, images: np.ndarray, scale: int = 4) -> None:
    """Rows×columns×H×W×C images in [0, 1] as one PNG grid (grey or colour)."""
    plt = pyplot()
    pixels, style = displayable(image_grid(images, scale))
    with atomic_path(path) as tmp:
        plt.imsave(tmp, pixels, format="png", **style)


def save_tradeoff_png(path: Path, points: list[dict], title: str) -> None:
    """Size (gzipped KiB, log scale) against test accuracy, a labelled point per variant."""
    plt = pyplot()
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
    _save(figure, path)


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


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    plt = pyplot()
    try:
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)


def save_confusion_png(
    path: Path, matrix: np.ndarray, title: str, class_names: Sequence[str]
) -> None:
    """Counts of (true class, predicted class), darker for more; the diagonal is right. Up to
    30 classes are named and counted in their cells; more would not be legible."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    side = min(5.2 + 0.18 * max(len(matrix) - 10, 0), 12)
    figure, axes = plt.subplots(figsize=(side, side - 0.6), dpi=110)
    image = axes.imshow(matrix, cmap="Blues")
    classes = range(len(matrix))
    legible = len(matrix) <= 30
    for true in classes if legible else ():
        for predicted in classes:
            count = int(matrix[true, predicted])
            if count:
                dark = count > matrix.max() / 2
                axes.text(
                    predicted,
                    true,
                    count,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    if legible:
        axes.set_xticks(list(classes), list(class_names), rotation=90 if len(matrix) > 10 else 0)
        axes.set_yticks(list(classes), list(class_names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    _save(figure, path)


def save_reliability_png(path: Path, bins: list[dict], ece: float, title: str) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect
    calibration, with the bin counts underneath."""
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title} (ECE {ece:.4f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge")
    bottom.set_yscale("symlog")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("images")
    _save(figure, path)


def save_curves_png(
    path: Path,
    panels: dict[str, dict[str, dict[float, float]]],
    title: str,
    ylabel: str,
    xlabel: str = "severity",
) -> None:
    """One panel per perturbation family; in each, a line per series (x: severity)."""
    plt = pyplot()
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows), dpi=110, squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (panel, series) in zip(axes.flat, panels.items(), strict=False):  # spare axes
        for label, curve in series.items():
            xs = sorted(curve)
            dashed = label.startswith("tflite")
            ax.plot(
                xs,
                [curve[v] for v in xs],
                marker="o",
                markersize=3,
                linestyle="--" if dashed else "-",
                label=label,
            )
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel(ylabel)
    figure.suptitle(title)
    _save(figure, path)


def save_attribution_grid_png(
    path: Path, images: np.ndarray, maps: dict[str, np.ndarray], labels: list[str]
) -> None:
    """Rows: images; columns: the image, then each method's attribution over it (each map
    scaled to its own maximum magnitude)."""
    plt = pyplot()
    rows, columns = len(images), 1 + len(maps)
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.3 * columns, 1.3 * rows + 0.4), dpi=110, squeeze=False
    )
    for r in range(rows):
        pixels, style = displayable(images[r])
        axes[r][0].imshow(pixels, **style)
        axes[r][0].set_ylabel(labels[r], fontsize=7)
        for c, (method, heat) in enumerate(maps.items(), start=1):
            magnitude = np.abs(heat[r])
            axes[r][c].imshow(pixels, **style)
            axes[r][c].imshow(
                magnitude / max(float(magnitude.max()), 1e-12), cmap="inferno", alpha=0.6
            )
            if r == 0:
                axes[r][c].set_title(method.replace("_", " "), fontsize=7)
        if r == 0:
            axes[r][0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(figure, path)
