"""generate: images of one class from the trained GAN generator, as an NPZ the ingest stage
reads (`data.source: npz`) and a PNG grid beside it.

    python -m pipeline.tools.generate --label 3 --count 64 --out data/generated/threes.npz
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core.cli import PipelineError, run_stage, stage_parser
from pipeline.core.io import atomic_path
from pipeline.core.stage import apply_reproducibility
from pipeline.data.sources import npz_bytes
from pipeline.ml.figures import save_grid_png

GENERATOR = layout.GAN_DIR / layout.GENERATOR_FILE


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("generate", __doc__ or "")
    parser.add_argument("--label", type=int, required=True, help="class to generate")
    parser.add_argument("--count", type=int, default=64, help="number of images")
    parser.add_argument("--out", type=Path, required=True, help="NPZ file to write")
    parser.add_argument("--seed", type=int, default=0, help="latent-vector seed")
    parser.add_argument("--generator", type=Path, default=GENERATOR)
    args = parser.parse_args(argv)
    if args.count < 1:
        raise PipelineError(f"--count must be at least 1 (got {args.count})")
    if args.out.suffix != ".npz":
        raise PipelineError(f"--out must name an .npz file (got {args.out})")

    apply_reproducibility(args.params)  # before TensorFlow's first op
    from pipeline.ml.artifacts import load_keras
    from pipeline.ml.gan import generate  # TensorFlow only once the arguments are sane

    generator = load_keras(args.generator)
    try:
        num_classes = generator.get_layer("label_embedding").input_dim
    except ValueError:
        raise PipelineError(
            f"{args.generator}: not a conditional generator from the gan stage"
        ) from None
    if not 0 <= args.label < num_classes:
        raise PipelineError(f"--label must be in 0..{num_classes - 1} (got {args.label})")
    labels = np.full(args.count, args.label, dtype=np.int64)
    images = generate(generator, labels, args.seed).astype(np.float32)
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(npz_bytes(images, labels))
    columns = min(args.count, 16)
    rows = -(-args.count // columns)
    padded = np.zeros((rows * columns, *images.shape[1:]), np.float32)
    padded[: args.count] = images
    save_grid_png(args.out.with_suffix(".png"), padded.reshape(rows, columns, *images.shape[1:]))
    print(f"generate: {args.count} images of class {args.label} -> {args.out} (+ .png)")


if __name__ == "__main__":
    run_stage("generate", main)
