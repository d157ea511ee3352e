"""ingest: load the configured source, split it stratified, scale pixels, write data/prepared/."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.cli import run_stage
from pipeline.core.layout import PREPARED_DIR
from pipeline.core.stage import start
from pipeline.data.prepared import prepare, write_prepared


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("ingest", __doc__, argv)
    with timer.phase("data"):
        prepared = prepare(params.data, params.seed)
    with timer.phase("outputs"):
        write_prepared(prepared, PREPARED_DIR)
    timer.finish()
    counts = {name: split["count"] for name, split in prepared.manifest["splits"].items()}
    shape = "×".join(str(side) for side in prepared.image_shape)
    print(
        f"ingest: {params.data.source} -> {PREPARED_DIR} {counts}, {shape} images, "
        f"{prepared.num_classes} classes, hash {prepared.content_hash[:12]}"
    )


if __name__ == "__main__":
    run_stage("ingest", main)
