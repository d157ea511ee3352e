"""Model cards: one page per model family, every number in it read from the stages' outputs.

`model_card` builds the card from typed outputs (a pure function); `card_markdown` writes it
as `reports/model_cards/<family>.md`, the report page shows the same sections, and promotion
sets it as the registered version's description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pipeline.core.outputs import CompressReport, EvaluateReport, SupportedVariant, TrainMetrics
from pipeline.core.params import Params

MAX_CLASS_ROWS = 20  # the class table lists this many classes, then says how many more
SPLIT_ORDER = ("train", "val", "test")
DEPLOY_TOLERANCE_POINTS = 1.0  # a variant to deploy loses at most this much accuracy
SHIFT_NOTED = 0.01  # an accuracy drop under the smallest shift worth a limitation


class Section(BaseModel):
    title: str
    sentences: list[str]
    table: list[list[str]] = []  # a header row, then rows; empty: no table


class ModelCard(BaseModel):
    family: str
    title: str
    sections: list[Section]


@dataclass(frozen=True)
class CardSources:
    """What one family's card is made from: the outputs of every stage before `report`."""

    family: str
    params: Params
    manifest: dict[str, Any]
    validation: dict[str, Any]
    train: TrainMetrics
    evaluated: EvaluateReport
    compressed: CompressReport
    model_digest: str  # sha256 of models/<family>/model.keras: the key of its lineage run
    dvc_inputs_digest: str  # train@<family>'s inputs as DVC hashes them, summed up


def model_card(s: CardSources) -> ModelCard:
    return ModelCard(
        family=s.family,
        title=f"Model card: {s.family} on {s.manifest['source']}",
        sections=[
            Section(title="Owner and intended use", sentences=_use(s)),
            Section(title="Training data", sentences=_data(s), table=_class_table(s.manifest)),
            Section(title="Performance", sentences=_performance(s)),
            Section(title="Calibration", sentences=_calibration(s)),
            Section(title="Robustness", sentences=_robustness(s.evaluated)),
            Section(
                title="Compression: what to deploy",
                sentences=_deployment(s.compressed),
                table=_variant_table(s.compressed),
            ),
            Section(title="Limitations", sentences=_limitations(s)),
            Section(title="Lineage", sentences=_lineage(s)),
        ],
    )


def card_markdown(card: ModelCard) -> str:
    lines = [f"# {card.title}", ""]
    for section in card.sections:
        lines += [f"## {section.title}", ""]
        lines += [f"- {sentence}" for sentence in section.sentences]
        if section.table:
            header, *rows = section.table
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def _use(s: CardSources) -> list[str]:
    return [f"Owner: {s.params.card.owner}.", f"Intended use: {s.params.card.intended_use}"]


def _class_names(manifest: dict[str, Any]) -> list[str]:
    return manifest.get("class_names") or [str(c) for c in range(manifest["num_classes"])]


def _data(s: CardSources) -> list[str]:
    m, v = s.manifest, s.validation
    splits = m["splits"]
    height, width, channels = m["image_shape"]
    colour = "colour" if channels == 3 else "grayscale"
    checked = sum(len(items) for items in v["splits"].values())
    rows = sum(v["rows"].values())
    verdict = "passed" if v["success"] else "FAILED"
    return [
        f"Source `{m['source']}`: {splits['train']['count']} training, "
        f"{splits['val']['count']} validation and {splits['test']['count']} test images, "
        f"{height}×{width} {colour}, in {len(_class_names(m))} classes.",
        f"Prepared content hash `{m['content_hash']}`.",
        f"Validation ({v['suite']}): {verdict}, {checked} expectations over {rows} rows.",
    ]


def _class_table(manifest: dict[str, Any]) -> list[list[str]]:
    names, splits = _class_names(manifest), manifest["splits"]
    rows = [
        [name, *(str(splits[split]["class_counts"].get(str(c), 0)) for split in SPLIT_ORDER)]
        for c, name in enumerate(names[:MAX_CLASS_ROWS])
    ]
    if len(names) > MAX_CLASS_ROWS:
        rows.append([f"… {len(names) - MAX_CLASS_ROWS} more", "", "", ""])
    return [["class", *SPLIT_ORDER], *rows]


def _performance(s: CardSources) -> list[str]:
    clean = s.evaluated.clean
    weakest = min(clean.per_class, key=lambda c: (c.f1, c.class_))
    return [
        f"Test accuracy {clean.accuracy:.4f} and macro F1 {clean.macro_f1:.4f} on "
        f"{s.evaluated.test_images} test images, from one training run (seed {s.params.seed}); "
        "the spread over seeds is not measured here.",
        f"The weakest class is `{weakest.name}`: precision {weakest.precision:.3f}, recall "
        f"{weakest.recall:.3f}, F1 {weakest.f1:.3f} ({weakest.support} test images).",
        f"{s.train.parameters:,} parameters, {s.train.epochs_trained} epochs (best: epoch "
        f"{s.train.best_epoch}).",
    ]


def _calibration(s: CardSources) -> list[str]:
    clean = s.evaluated.clean
    bins = len(clean.reliability)
    sentences = [f"Expected calibration error {clean.ece:.4f} over {bins} confidence bins."]
    filled = [b for b in clean.reliability if b.count and b.confidence is not None]
    if filled:
        # The bin that adds most to the error: its gap weighted by its share of the images.
        b = max(filled, key=lambda b: b.count * abs((b.accuracy or 0.0) - (b.confidence or 0.0)))
        sentences.append(
            f"The largest share of it: the {b.count} predictions made with confidence "
            f"{b.lower:.2f}–{b.upper:.2f} are right {b.accuracy or 0.0:.1%} of the time, at a "
            f"mean confidence of {b.confidence or 0.0:.1%}."
        )
    return sentences


def _perturbation(kind: str, severity: str) -> str:
    phrases = {
        "shift": f"a {severity}-pixel shift (right and down)",
        "rotation": f"a rotation by {severity}°",
        "gaussian_noise": f"Gaussian noise of σ {severity}",
        "occlusion": f"erasing {float(severity):.0%} of the image",
    }
    return phrases.get(kind, f"{kind.replace('_', ' ')} at {severity}")


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _robustness(e: EvaluateReport) -> list[str]:
    a = e.adversarial
    epsilon = f"{a.robust_epsilon:g}"
    fgsm = a.fgsm.get(epsilon)
    sentences = [
        f"Under a PGD attack at ε {epsilon} ({a.pgd_steps} steps, L∞ on pixels in [0, 1]) "
        f"accuracy drops to {a.robust_accuracy:.3f}"
        + (f"; under FGSM at the same ε to {fgsm:.3f}." if fgsm is not None else ".")
    ]
    harshest = []
    for kind, curve in sorted(e.corruptions.items()):
        severity = max(curve, key=float)
        harshest.append((curve[severity], kind, severity))
        sentences.append(
            f"{_sentence_case(_perturbation(kind, severity))} drops accuracy to "
            f"{curve[severity]:.3f}."
        )
    if harshest:
        accuracy, kind, severity = min(harshest)
        sentences.append(
            f"The worst corruption measured is {_perturbation(kind, severity)} ({accuracy:.3f}), "
            f"on {e.sweep_images} test images."
        )
    return sentences


def _deployable(c: CompressReport) -> dict[str, SupportedVariant]:
    floor = c.keras_float.accuracy - DEPLOY_TOLERANCE_POINTS / 100
    return {k: v for k, v in c.supported.items() if v.accuracy >= floor}


def _rule(c: CompressReport) -> str:
    return (
        f"among the TFLite variants within {DEPLOY_TOLERANCE_POINTS:g} accuracy point of the "
        f"Keras model ({c.keras_float.accuracy:.4f})"
    )


def _deployment(c: CompressReport) -> list[str]:
    candidates = _deployable(c)
    if not candidates:
        return [f"No variant qualifies {_rule(c)}: deploy the Keras model."]
    smallest = min(candidates, key=lambda k: (candidates[k].size_gzip_bytes, k))
    small = candidates[smallest]
    unsupported = sorted(k for k in c.variants if k not in c.supported)
    sentences = [
        f"For size, {_rule(c)}: `{smallest}` ({small.size_gzip_bytes / 1024:.1f} KiB gzipped, "
        f"accuracy {small.accuracy:.4f}).",
        "For speed: latency is measured, so it differs from machine to machine and is not part "
        "of this card; the registered version's description names the fastest variant as "
        "measured where compress ran (the lineage run's `compress.<variant>.latency_ms_median`).",
    ]
    if unsupported:
        sentences.append(f"Not available for this model: {', '.join(unsupported)}.")
    return sentences


def speed_section(c: CompressReport, latency_ms: Mapping[str, float]) -> str:
    """The deployment choice for speed, from latencies measured where compress ran (variant ->
    median milliseconds for one image), as a Markdown section to follow the card."""
    candidates = {k: v for k, v in _deployable(c).items() if k in latency_ms}
    if not candidates:
        return ""
    fastest = min(candidates, key=lambda k: (latency_ms[k], k))
    rows = "\n".join(f"| {k} | {latency_ms[k]:.4f} |" for k in sorted(candidates))
    return (
        "## Speed, as measured on the machine that ran compress\n\n"
        f"For speed, {_rule(c)}, by the median single-image latency: `{fastest}` "
        f"({latency_ms[fastest]:.4f} ms, accuracy {candidates[fastest].accuracy:.4f}).\n\n"
        f"| variant | latency median (ms) |\n|---|---|\n{rows}\n"
    )


def _variant_table(c: CompressReport) -> list[list[str]]:
    header = ["variant", "accuracy (kernels)", "gzipped (KiB)", "runs on"]
    rows = [
        [
            name,
            f"{v.accuracy:.4f} ({v.accuracy_kernels})",
            f"{v.size_gzip_bytes / 1024:.1f}",
            v.kernels,
        ]
        for name, v in c.supported.items()
    ]
    return [header, *rows]


def _limitations(s: CardSources) -> list[str]:
    e, m = s.evaluated, s.manifest
    sentences = [
        f"Measured only on the `{m['source']}` test split: images unlike the training data "
        "(other sizes, colours, styles or classes) are outside what was measured.",
    ]
    shift = e.corruptions.get("shift", {})
    if shift:
        severity = min(shift, key=float)
        if e.clean.accuracy - shift[severity] > SHIFT_NOTED:
            sentences.append(
                f"Not invariant to position: {_perturbation('shift', severity)} already drops "
                f"accuracy from {e.clean.accuracy:.3f} to {shift[severity]:.3f}."
            )
    missed = [
        name for name, check in {**e.targets, **s.compressed.targets}.items() if check.met is False
    ]
    if missed:
        sentences.append(f"Targets not met: {', '.join(sorted(missed))}.")
    return sentences + list(s.params.card.limitations)


def _lineage(s: CardSources) -> list[str]:
    return [
        f"Model file sha256 `{s.model_digest}`: its MLflow lineage run is the first finished "
        f"run in experiment `{s.params.experiment_name}` whose `model_digest` tag has this value.",
        f"DVC inputs of `train@{s.family}` (code, data and params, as DVC hashes them): digest "
        f"`{s.dvc_inputs_digest}`, the lineage run's `dvc_inputs_md5` tag if nothing changed "
        "since it trained.",
        # A card is a DVC output: it cannot name the commit whose dvc.lock records its hash.
        "The git commit of the code is the lineage run's `git_commit` tag.",
    ]
