"""Every path the pipeline reads or writes, relative to the project root: the one place that
names the files `dvc.yaml` declares (a test checks each of its outs, metrics and plots against
this module). Paths only: this module imports nothing, so every other one may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

MODEL_NAMES: Final = ("fnn", "cnn", "lstm")  # the classifier families, one DVC stage each

# ingest -> data/prepared/
PREPARED_DIR = Path("data/prepared")
MANIFEST = "manifest.json"
SPLIT_FILE = "{split}.npz"

# validate -> reports/validation/
SUITE = Path("expectations/prepared_images.json")
VALIDATION_DIR = Path("reports/validation")
VALIDATION_RESULTS = VALIDATION_DIR / "results.json"
VALIDATION_SUMMARY = VALIDATION_DIR / "summary.html"
DATA_DOCS = VALIDATION_DIR / "data_docs"  # GX's pages: run times, random ids; not a DVC output
REJECTED_DIR = VALIDATION_DIR / "rejected"  # the latest failing results; not a DVC output

# train -> models/<name>/, reports/train/<name>.json
MODELS_DIR = Path("models")
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
INPUTS_FILE = "inputs.json"  # the model's input shape, preprocessing and class names
TRAIN_REPORTS = Path("reports/train")
CHECKPOINTS = Path(".checkpoints")  # interrupted trainings, kept until a rerun completes them

# baseline -> models/baseline/<name>.pkl, reports/baseline/<name>.json
BASELINE_NAMES: Final = ("svc", "boosting")  # scikit-learn's classical models, one stage
BASELINE_DIR = MODELS_DIR / "baseline"
BASELINE_REPORTS = Path("reports/baseline")

# gan -> models/gan/, reports/gan/metrics.json
GAN_DIR = MODELS_DIR / "gan"
GENERATOR_FILE = "generator.keras"
LOSSES_FILE = "losses.csv"
SAMPLES_DIR = "samples"
GAN_METRICS = Path("reports/gan/metrics.json")
JUDGE = "cnn"  # the train stage's classifier that judges the generated images

# compress -> models/compressed/<name>/, reports/compress/
COMPRESSED_DIR = MODELS_DIR / "compressed"
PRUNED_FILE = "pruned.keras"  # the pruned float parent of the pruned TFLite variants
COMPRESS_REPORTS = Path("reports/compress")

# evaluate -> reports/evaluate/<name>.json, <name>/
EVALUATE_REPORTS = Path("reports/evaluate")
# The CSV files behind `dvc plots`, inside reports/evaluate/<name>/.
PLOT_TABLES = ("confusion.csv", "adversarial.csv", "reliability.csv", "deletion.csv")

# ensemble -> reports/ensemble.json: the mean of the families' probabilities
ENSEMBLE_REPORT = Path("reports/ensemble.json")

# report, promote
REPORT_PAGE = Path("reports/index.html")
MODEL_CARDS_DIR = Path("reports/model_cards")  # <family>.md, written by the report stage
REPORT_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "report.html.j2"
PROMOTION = Path("reports/promotion.json")

# Measured on the machine that ran the stage (wall time, latency, throughput): they differ from
# run to run, so they are no DVC output and git ignores them; the same figures go to MLflow.
# `dvc.lock` and the committed metrics then hold only what any machine computes alike.
MEASURED_DIR = Path("reports/measured")
TIMING_DIR = MEASURED_DIR / "timing"
DAG_PICTURE = MEASURED_DIR / "dag.svg"  # the DAG, each stage with its last run: repro_summary

# Every line a stage printed, the console's known-harmless noise included (pipeline.core.console).
LOGS_DIR = Path("logs")


def model_dir(name: str) -> Path:
    return MODELS_DIR / name


def model_file(name: str) -> Path:
    return MODELS_DIR / name / MODEL_FILE


def history_file(name: str) -> Path:
    return MODELS_DIR / name / HISTORY_FILE


def train_metrics(name: str) -> Path:
    return TRAIN_REPORTS / f"{name}.json"


def compressed_dir(name: str) -> Path:
    return COMPRESSED_DIR / name


def compress_report(name: str, suffix: str = ".json") -> Path:
    """reports/compress/<name><suffix>: `.json`, `.md`, `_tradeoff.png`, `_tradeoff.csv`."""
    return COMPRESS_REPORTS / f"{name}{suffix}"


def evaluate_report(name: str) -> Path:
    return EVALUATE_REPORTS / f"{name}.json"


def evaluate_speed(name: str) -> Path:
    """reports/measured/evaluate/<name>.json: the Keras model's latency and throughput."""
    return MEASURED_DIR / "evaluate" / f"{name}.json"


def compress_speed(name: str) -> Path:
    """reports/measured/compress/<name>.json: every variant's latency, and the speed targets."""
    return MEASURED_DIR / "compress" / f"{name}.json"


def measured_script(measured_file: Path) -> Path:
    """The same figures as a script the report page loads beside it (`<name>.js`): a page
    opened from disk may load scripts next to it, not read JSON."""
    return measured_file.with_suffix(".js")


def measured_key(measured_file: Path) -> str:
    """The name the script gives its figures on the page: `evaluate/cnn`."""
    return f"{measured_file.parent.name}/{measured_file.stem}"


def evaluate_dir(name: str) -> Path:
    return EVALUATE_REPORTS / name


def tflite_artifact(name: str, variant: str) -> str:
    """Where compress logs a variant's .tflite file in its MLflow run."""
    return f"compress/{compressed_dir(name).name}/{variant}.tflite"


def baseline_model(name: str) -> Path:
    return BASELINE_DIR / f"{name}.pkl"


def baseline_report(name: str) -> Path:
    return BASELINE_REPORTS / f"{name}.json"


def model_card_file(name: str) -> Path:
    return MODEL_CARDS_DIR / f"{name}.md"


def timing_file(stage: str) -> Path:
    """reports/measured/timing/<stage>.json, `train@cnn` as `train_cnn`."""
    return TIMING_DIR / f"{stage.replace('@', '_')}.json"


def stage_outputs(stage: str, name: str | None = None) -> list[Path]:
    """What a stage (`name`: the family of a foreach stage) declares as outputs in dvc.yaml:
    outs, metrics and plots together. Its measurements (MEASURED_DIR) are not among them."""
    outputs: dict[str, list[Path]] = {
        "ingest": [PREPARED_DIR],
        "validate": [VALIDATION_RESULTS, VALIDATION_SUMMARY],
        "gan": [GAN_DIR, GAN_METRICS],
        "baseline": [BASELINE_DIR, *(baseline_report(b) for b in BASELINE_NAMES)],
        "ensemble": [ENSEMBLE_REPORT],
        "report": [REPORT_PAGE, MODEL_CARDS_DIR],
    }
    if name is not None:
        outputs |= {
            "train": [model_dir(name), train_metrics(name)],
            "compress": [
                compressed_dir(name),
                *(compress_report(name, s) for s in (".json", ".md", "_tradeoff.png")),
                compress_report(name, "_tradeoff.csv"),
            ],
            "evaluate": [evaluate_dir(name), evaluate_report(name)],
        }
    return outputs[stage]


def plot_sources() -> list[Path]:
    """The files dvc.yaml's top-level plots draw from."""
    return [
        GAN_DIR / LOSSES_FILE,
        *(history_file(name) for name in MODEL_NAMES),
        *(evaluate_dir(name) / table for table in PLOT_TABLES for name in MODEL_NAMES),
    ]
