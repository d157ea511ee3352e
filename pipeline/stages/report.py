"""report: one page comparing every model, reports/index.html, and a model card
per family, reports/model_cards/<family>.md.

Reads what the other stages wrote (metrics, figures, validation results, the manifest) and
embeds every image, so the page opens from disk with no network and needs no other file but the
measured speed below. Strings from data, params and
runs are escaped by the template engine (Jinja2 autoescape).

Both are DVC outputs, so they hold only what any machine computes alike: no time of day, no
commit (the commit's dvc.lock records their hash), no speed. The page fills its speed columns in
the browser from the figures the last run measured beside it (reports/measured/*/<name>.js),
when they were measured on the model the page shows (its sha256).
"""

from __future__ import annotations

import base64
import csv
import io
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core import layout
from pipeline.core.cli import PipelineError, run_stage
from pipeline.core.io import atomic_path, file_digest, read_json, write_text
from pipeline.core.model_card import CardSources, ModelCard, card_markdown, model_card
from pipeline.core.outputs import (
    BaselineReport,
    CompressReport,
    EnsembleReport,
    EvaluateReport,
    GanMetrics,
    ModelInputs,
    TrainMetrics,
    unmet,
)
from pipeline.core.params import Params, flatten
from pipeline.core.provenance import dvc_inputs, package_versions
from pipeline.core.repro_summary import repro_started, show
from pipeline.core.stage import start
from pipeline.data.validation_results import failures


def main(argv: Sequence[str] | None = None) -> None:
    params, _, timer = start("report", __doc__, argv)
    with timer.phase("data"):
        page = context(params)
    with timer.phase("outputs"):
        write_cards(page["cards"])
        write_text(layout.REPORT_PAGE, render(page))
    timer.finish()
    print(
        f"report: {len(layout.MODEL_NAMES)} models compared -> {layout.REPORT_PAGE}, model cards "
        f"-> {layout.MODEL_CARDS_DIR}"
    )
    print_repro_summary()


def print_repro_summary() -> None:
    """The DAG's last stage: a `dvc repro` that reaches it ends with what the repro did. The page
    and cards are written by then, so a summary that cannot be drawn is one line, no failure."""
    if (started := repro_started()) is None:
        return
    try:
        show(started)
    except (PipelineError, OSError, subprocess.SubprocessError) as error:
        print(f"report: no summary of the repro: {error}", file=sys.stderr)


def write_cards(cards: list[ModelCard]) -> None:
    """Every card, or none: the folder is replaced whole."""
    with atomic_path(layout.MODEL_CARDS_DIR) as folder:
        folder.mkdir()
        for card in cards:
            (folder / f"{card.family}.md").write_text(card_markdown(card), encoding="utf-8")


def card_for(name: str, params: Params, manifest: dict[str, Any], validation: dict) -> ModelCard:
    inputs = dvc_inputs(f"train@{name}")
    return model_card(
        CardSources(
            family=name,
            params=params,
            manifest=manifest,
            validation=validation,
            train=TrainMetrics.read(layout.train_metrics(name)),
            evaluated=EvaluateReport.read(layout.evaluate_report(name)),
            compressed=CompressReport.read(layout.compress_report(name)),
            model_digest=file_digest(layout.model_file(name)),
            dvc_inputs_digest=inputs.get("digest", f"not recorded ({inputs.get('error')})"),
        )
    )


def read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro` to make it") from None
    except ValueError:
        raise PipelineError(f"{path}: not valid JSON") from None


def png_data_uri(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro` to make it") from None
    if not data.startswith(b"\x89PNG"):
        raise PipelineError(f"{path}: not a PNG image")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def history(path: Path) -> dict[str, list[float]]:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro` to make it") from None
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def learning_curves_png(histories: dict[str, dict[str, list[float]]]) -> str:
    """Validation accuracy and loss per epoch for every family, drawn in memory."""
    from pipeline.ml.figures import pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for index, (name, curves) in enumerate(histories.items()):
        epochs, color = curves["epoch"], f"C{index}"
        left.plot(epochs, curves["val_accuracy"], color=color, label=f"{name} validation")
        left.plot(epochs, curves["accuracy"], color=color, linestyle=":", label=f"{name} train")
        right.plot(epochs, curves["val_loss"], color=color, label=f"{name} validation")
    lowest = min(min(curves["val_accuracy"]) for curves in histories.values())
    # Zoomed on accuracies above 0.8, widened when a validation curve dips below that.
    bottom = 0.8 if lowest >= 0.8 else max(0.0, lowest - 0.05)
    left.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(bottom, 1.0))
    right.set(xlabel="epoch", ylabel="loss", title="validation loss", yscale="log")
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_row(name: str) -> dict[str, Any]:
    """The comparison table's row: one family's headline numbers from every stage."""
    train = TrainMetrics.read(layout.train_metrics(name))
    evaluated = EvaluateReport.read(layout.evaluate_report(name))
    compressed = CompressReport.read(layout.compress_report(name))
    supported = compressed.supported
    int8, pruned_int8 = supported.get("int8"), supported.get("pruned_int8")
    faithful, figures = evaluated.explanations.faithfulness, layout.evaluate_dir(name)
    return {
        "name": name,
        "model_digest": file_digest(layout.model_file(name)),  # what the measured speed is of
        "accuracy": evaluated.clean.accuracy,
        "macro_f1": evaluated.clean.macro_f1,
        "ece": evaluated.clean.ece,
        "robust_accuracy": evaluated.adversarial.robust_accuracy,
        "robust_epsilon": evaluated.adversarial.robust_epsilon,
        "corruption_accuracy": evaluated.corruption_accuracy_mean,
        "parameters": train.parameters,
        "epochs": train.epochs_trained,
        "keras_bytes": layout.model_file(name).stat().st_size,
        "keras_gzip_bytes": compressed.keras_float.size_gzip_bytes,
        "int8_accuracy": int8.accuracy if int8 else None,
        "int8_gzip_bytes": int8.size_gzip_bytes if int8 else None,
        "pruned_int8_gzip_bytes": pruned_int8.size_gzip_bytes if pruned_int8 else None,
        # Where the page finds the measured speed, relative to itself.
        "measured": {
            stage: layout.measured_key(path)
            for stage, path in (
                ("evaluate", layout.evaluate_speed(name)),
                ("compress", layout.compress_speed(name)),
            )
        },
        "most_faithful": faithful.most_faithful,
        "per_class": evaluated.clean.per_class,
        "fgsm": evaluated.adversarial.fgsm,
        "pgd": evaluated.adversarial.pgd,
        "deletion_auc": faithful.deletion_auc,
        "deletion_auc_random": faithful.deletion_auc_random,
        "ig_completeness_max": evaluated.explanations.ig_completeness_error.max,
        "unmet_targets": unmet(evaluated.targets) + unmet(compressed.targets),
        "figures": {  # in page order; the robustness panels take a whole row
            "confusion matrix": png_data_uri(figures / "confusion.png"),
            "reliability": png_data_uri(figures / "reliability.png"),
            "compression trade-off": png_data_uri(layout.compress_report(name, "_tradeoff.png")),
            "robustness": png_data_uri(figures / "robustness.png"),
            "deletion curves": png_data_uri(figures / "deletion.png"),
            "attributions": png_data_uri(figures / "attributions.png"),
        },
    }


def baseline_row(name: str) -> dict[str, Any]:
    """The Quality table's row for a classical baseline: the measures that carry over."""
    report = BaselineReport.read(layout.baseline_report(name))
    chosen = ", ".join(f"{k} {v}" for k, v in report.chosen.items())
    return {
        "name": name,
        "description": f"{report.description}: {chosen}",
        "accuracy": report.clean.accuracy,
        "macro_f1": report.clean.macro_f1,
        "ece": report.clean.ece,
        "corruption_accuracy": report.corruption_accuracy_mean,
    }


def ensemble_row() -> dict[str, Any]:
    """The Quality table's row for the ensemble, and its attacks table: white-box, and the
    attacks crafted on each member alone."""
    report = EnsembleReport.read(layout.ENSEMBLE_REPORT)
    return {
        "name": "ensemble",
        "description": f"mean of the probabilities of {', '.join(report.members)}",
        "accuracy": report.clean.accuracy,
        "macro_f1": report.clean.macro_f1,
        "ece": report.clean.ece,
        "robust_accuracy": report.adversarial.robust_accuracy,
        "corruption_accuracy": report.corruption_accuracy_mean,
        "fgsm": report.adversarial.fgsm,
        "pgd": report.adversarial.pgd,
        "transferred": {
            name: {"fgsm": attacks.fgsm, "pgd": attacks.pgd}
            for name, attacks in report.transferred_attacks.items()
        },
        "unmet_targets": unmet(report.targets),
    }


def latest_sample_grid(folder: Path) -> tuple[str, str]:
    grids = sorted(folder.glob("epoch_*.png"))
    if not grids:
        raise PipelineError(f"{folder}: no GAN sample grids; run `dvc repro gan`")
    return grids[-1].stem.removeprefix("epoch_").lstrip("0") or "0", png_data_uri(grids[-1])


def context(params: Params) -> dict[str, Any]:
    manifest = read(layout.PREPARED_DIR / layout.MANIFEST)
    validation = read(layout.VALIDATION_RESULTS)
    gan_epoch, gan_grid = latest_sample_grid(layout.GAN_DIR / layout.SAMPLES_DIR)
    return {
        "title": f"Model report: {params.experiment_name}",
        "large_batch": params.evaluate.throughput_batch,
        "scripts": [
            layout.measured_script(path).relative_to(layout.REPORT_PAGE.parent).as_posix()
            for path in (
                *(layout.evaluate_speed(name) for name in layout.MODEL_NAMES),
                *(layout.compress_speed(name) for name in layout.MODEL_NAMES),
                layout.DAG_PICTURE,
            )
        ],
        "dag_key": layout.measured_key(layout.DAG_PICTURE),
        "models": [model_row(name) for name in layout.MODEL_NAMES],
        "baselines": [baseline_row(name) for name in layout.BASELINE_NAMES],
        "ensemble": ensemble_row(),
        "cards": [card_for(name, params, manifest, validation) for name in layout.MODEL_NAMES],
        "learning_curves": learning_curves_png(
            {name: history(layout.history_file(name)) for name in layout.MODEL_NAMES}
        ),
        "gan": {
            "metrics": GanMetrics.read(layout.GAN_METRICS).model_dump(),
            "epoch": gan_epoch,
            "grid": gan_grid,
        },
        "validation": {
            "success": validation["success"],
            "suite": validation["suite"],
            "rows": validation["rows"],
            "expectations": sum(len(items) for items in validation["splits"].values()),
            "failures": failures(validation["splits"]),
        },
        "provenance": {
            "data_source": manifest["source"],
            "data_hash": manifest["content_hash"],
            "splits": {split: s["count"] for split, s in manifest["splits"].items()},
            "image_shape": manifest["image_shape"],
            "class_names": ModelInputs.from_manifest(manifest).class_names,
            "params": flatten(params),
            "versions": {k.removeprefix("version."): v for k, v in package_versions().items()},
        },
    }


def inline_code(text: str) -> Any:
    """A sentence escaped, with its `backticked` parts as <code>."""
    import re

    import markupsafe

    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def render(values: dict[str, Any]) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(layout.REPORT_TEMPLATE.parent),
        autoescape=True,  # every string from data, params or runs is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = lambda v, digits=4: "–" if v is None else f"{v:.{digits}f}"
    environment.filters["code"] = inline_code
    environment.filters["kib"] = lambda v: "–" if v is None else f"{v / 1024:,.1f} KiB"
    return environment.get_template(layout.REPORT_TEMPLATE.name).render(**values)


if __name__ == "__main__":
    run_stage("report", main)
