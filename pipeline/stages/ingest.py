"""ingest: load the configured source, split it stratified, scale pixels, write data/prepared/."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.params import DataParams, load_params
from pipeline.core.timing import StageTimer
from pipeline.data.prepared import PREPARED_DIR, Prepared, build_manifest, write_prepared
from pipeline.data.sources import load_source, scale_pixels, stratified_split


def prepare(data: DataParams, seed: int) -> Prepared:
    raw = load_source(data.source, data.path)
    x = scale_pixels(raw.x, raw.pixel_max)
    splits = stratified_split(x, raw.y, data.val_fraction, data.test_fraction, seed)
    manifest = build_manifest(
        splits,
        source=data.source,
        path=data.path,
        num_classes=data.num_classes,
        pixel_max=raw.pixel_max,
        seed=seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
    )
    return Prepared(splits=splits, manifest=manifest)


def main(argv: Sequence[str] | None = None) -> None:
    timer = StageTimer("ingest")
    args = stage_parser("ingest", __doc__ or "").parse_args(argv)
    params = load_params(args.params)
    with timer.phase("data"):
        prepared = prepare(params.data, params.seed)
    with timer.phase("outputs"):
        write_prepared(prepared, PREPARED_DIR)
    timer.finish()
    counts = {name: split["count"] for name, split in prepared.manifest["splits"].items()}
    print(
        f"ingest: {params.data.source} -> {PREPARED_DIR} {counts} hash {prepared.content_hash[:12]}"
    )


if __name__ == "__main__":
    run_stage("ingest", main)
