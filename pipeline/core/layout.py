"""The layout of a trained model's folder, models/<name>/, shared by the stages that read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.cli import PipelineError
from pipeline.core.io import read_json

MODELS_DIR = Path("models")
MODEL_FILE = "model.keras"
LINEAGE_FILE = "lineage.json"  # the model's MLflow lineage run id, written by its train stage


def read_lineage(folder: Path) -> dict[str, Any]:
    """`<model folder>/lineage.json`: the model's MLflow run id, written by the train stage."""
    path = Path(folder) / LINEAGE_FILE
    try:
        lineage = read_json(path)
        run_id = str(lineage["run_id"])
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the stage that trains this model") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: not a lineage record (needs a run_id)") from None
    return {**lineage, "run_id": run_id}
