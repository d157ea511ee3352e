"""The typed outputs of the stages, as TFX components have typed artifacts.

Each stage that hands results to another (train, gan, compress, evaluate, promote) writes one of
these models as JSON, and the readers (report, promote, sweep) load the model back: a renamed
field breaks the type check and the build, not a page at run time. Every acceptance target,
wherever it is checked, has the one shape `Check {value, bound, met}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from pipeline.core.cli import PipelineError, first_line
from pipeline.core.io import read_json, write_json, write_text
from pipeline.core.layout import INPUTS_FILE, measured_key, measured_script
from pipeline.core.params import describe_errors
from pipeline.core.reproducibility import TFLiteKernels

Curve = dict[str, float]  # severity (as written by `severity_key`) -> accuracy
Curves = dict[str, Curve]  # perturbation -> its curve


def severity_key(severity: float) -> str:
    """A severity as a JSON key and metric-name part: 0.1 -> "0.1", 2.0 -> "2"."""
    return f"{severity:g}"


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    made_by: ClassVar[str] = "`dvc repro` to make it"  # for the error that names a missing file

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(by_alias=True))

    @classmethod
    def read(cls, path: Path) -> Self:
        """The output at `path`; one line naming the file when it is missing or malformed."""
        try:
            return cls.model_validate(read_json(path))
        except FileNotFoundError:
            raise PipelineError(f"{path}: missing; run {cls.made_by}") from None
        except ValidationError as error:  # a ValueError too: caught first
            raise PipelineError(
                f"{path}: not a {cls.__name__} ({describe_errors(error)})"
            ) from None
        except ValueError as error:  # not JSON at all
            raise PipelineError(f"{path}: not valid JSON ({first_line(error)})") from None


class Measured(Output):
    """Figures measured on the machine that ran the stage (reports/measured/): beside the JSON,
    the same figures as a script that the report page loads, as `measured["<stage>/<name>"]`."""

    # sha256 of the Keras model file measured (models/<name>/model.keras): the page shows the
    # figures only beside that model, not beside outputs checked out or pulled since.
    model_digest: str

    def write(self, path: Path) -> None:
        figures = self.model_dump(by_alias=True)
        write_json(path, figures)
        key, values = json.dumps(measured_key(path)), json.dumps(figures, sort_keys=True)
        assignment = f"(window.measured ??= {{}})[{key}] = {values};"
        write_text(measured_script(path), assignment + "\n")


class Check(Output):
    """A measured value against its bound; `variant` names the model it was measured on where a
    stage measures several. A value never measured (None) does not meet its bound."""

    value: float | None
    bound: float
    met: bool
    variant: str | None = None

    @model_serializer(mode="wrap")
    def _without_empty_variant(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if dumped.get("variant") is None:
            dumped.pop("variant", None)
        return dumped

    @classmethod
    def at_most(cls, value: float, bound: float, variant: str | None = None) -> Check:
        return cls(value=value, bound=bound, met=bool(value <= bound), variant=variant)

    @classmethod
    def at_least(cls, value: float, bound: float, variant: str | None = None) -> Check:
        return cls(value=value, bound=bound, met=bool(value >= bound), variant=variant)


Checks = dict[str, Check]


def unmet(checks: Checks) -> list[str]:
    return [name for name, check in checks.items() if not check.met]


PREDICTED_COLUMN = "predicted"  # the served model's column of predicted class names


class ModelInputs(Output):
    """`models/<name>/inputs.json` (and `inputs.json` on its lineage run): what the model takes
    and what its outputs mean, so `predict` prepares a new image exactly as ingest prepared the
    training images and names the classes."""

    made_by: ClassVar[str] = "the stage that trains this model"
    image_shape: tuple[int, int, int]  # H, W, C
    image_size: tuple[int, int] | None  # data.image_size: files were resized to it
    class_names: list[str]
    source: str

    @classmethod
    def of(cls, folder: Path) -> ModelInputs:
        return cls.read(folder / INPUTS_FILE)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelInputs:
        shape = manifest["image_shape"]
        names = manifest.get("class_names") or [str(c) for c in range(manifest["num_classes"])]
        size = manifest.get("image_size")
        return cls(
            image_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            image_size=(int(size[0]), int(size[1])) if size else None,
            class_names=[str(name) for name in names],
            source=str(manifest["source"]),
        )


class TrainMetrics(Output):
    """reports/train/<name>.json."""

    train_accuracy: float
    train_loss: float
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float
    epochs_trained: int
    best_epoch: int
    parameters: int
    replicas: int
    global_batch_size: int


class GanMetrics(Output):
    """reports/gan/metrics.json: the generator judged by the train stage's CNN."""

    classifier_agreement: float
    frechet_distance: float
    frechet_distance_real_floor: float
    classes_covered: int
    all_classes_covered: bool
    predicted_class_entropy: float
    predicted_class_entropy_ratio: float
    gan_train_accuracy: float
    gan_test_accuracy: float
    generated_per_class: int


# --- compress ---------------------------------------------------------------------------------


class Speed(Output):
    latency_ms_median: float
    latency_ms_p95: float
    throughput_per_s: float


class KerasFloat(Output):
    accuracy: float
    sparsity: float
    size_bytes: int
    size_gzip_bytes: int


class SupportedVariant(Output):
    supported: Literal[True] = True
    description: str
    # What LiteRT runs it on by default, and its speed was measured on: XNNPACK's delegate, or
    # the built-in kernels where XNNPACK cannot prepare it.
    kernels: TFLiteKernels = "xnnpack"
    accuracy: float
    accuracy_kernels: TFLiteKernels = "xnnpack"  # the reproducibility mode's (tflite_kernels)
    source_keras_accuracy: float  # the Keras model it was converted from
    sparsity: float
    size_bytes: int
    size_gzip_bytes: int
    dtypes: dict[str, list[str]]


class UnsupportedVariant(Output):
    supported: Literal[False] = False
    description: str
    reason: str


class CompressReport(Output):
    """reports/compress/<name>.json."""

    keras_float: KerasFloat
    variants: dict[str, SupportedVariant | UnsupportedVariant]
    targets: Checks

    @property
    def supported(self) -> dict[str, SupportedVariant]:
        return {k: v for k, v in self.variants.items() if isinstance(v, SupportedVariant)}


class CompressSpeed(Measured):
    """reports/measured/compress/<name>.json: how fast each variant ran on the machine that ran
    compress. Measured, so it differs run to run: no DVC output, and its targets apart."""

    keras_float: dict[str, Speed]  # per way of calling the Keras model
    variants: dict[str, Speed]  # the supported TFLite variants, in the LiteRT interpreter
    targets: Checks


# --- evaluate ---------------------------------------------------------------------------------


class ClassScores(Output):
    class_: int = Field(alias="class")
    name: str
    precision: float
    recall: float
    f1: float
    support: int


class ReliabilityBin(Output):
    lower: float
    upper: float
    count: int
    confidence: float | None  # None for an empty bin
    accuracy: float | None


class Clean(Output):
    accuracy: float
    macro_f1: float
    ece: float
    per_class: list[ClassScores]
    confusion_matrix: list[list[int]]
    reliability: list[ReliabilityBin]


class Adversarial(Output):
    fgsm: Curve
    pgd: Curve
    robust_epsilon: float
    robust_accuracy: float
    pgd_steps: int


class TransferredAttacks(Output):
    crafted_on: str
    fgsm: Curve
    pgd: Curve


class BaselineReport(Output):
    """reports/baseline/<name>.json: a classical model on the same split, measured where the
    deep models' measures carry over (no gradient attacks: it has no gradients to follow)."""

    made_by: ClassVar[str] = "the baseline stage (`dvc repro baseline`)"
    description: str
    chosen: dict[str, int | float | str]  # the hyper-parameters the validation split chose
    grid: list[dict[str, int | float | str]]  # every point tried, with its validation accuracy
    validation_accuracy: float
    test_accuracy: float
    test_images: int
    sweep_images: int  # of them, the corruption sweep's (evaluate.max_images)
    clean: Clean
    corruptions: Curves

    @property
    def corruption_accuracy_mean(self) -> float:
        return mean_accuracy(self.corruptions)


class VariantEvaluation(Output):
    accuracy: float
    kernels: TFLiteKernels  # LiteRT's that ran it: the reproducibility mode's (tflite_kernels)
    corruptions: Curves
    transferred_attacks: TransferredAttacks


class CompletenessError(Output):
    max: float
    mean: float
    grid_images: list[float]
    # Integrated Gradients' steps per image, doubled until the error met its bound.
    steps_max: int
    steps_mean: float


class Faithfulness(Output):
    images: int
    deleted_fraction: list[float]
    deletion_auc: dict[str, float]
    deletion_auc_random: float
    beats_random: dict[str, bool]
    most_faithful: str
    mean_curves: dict[str, list[float]]


class Explanations(Output):
    methods: list[str]
    grid_images: list[int]
    ig_completeness_error: CompletenessError
    faithfulness: Faithfulness


class EvaluateReport(Output):
    """reports/evaluate/<name>.json."""

    model: str
    model_bytes: int
    test_images: int
    sweep_images: int  # of them, the attack, corruption and TFLite sweeps' (evaluate.max_images)
    clean: Clean
    adversarial: Adversarial
    corruptions: Curves
    variants: dict[str, VariantEvaluation]
    explanations: Explanations
    targets: Checks

    @property
    def corruption_accuracy_mean(self) -> float:
        return mean_accuracy(self.corruptions)


def mean_accuracy(curves: Curves) -> float:
    """The mean over every severity of every curve."""
    return float(np.mean([v for curve in curves.values() for v in curve.values()]))


class EnsembleReport(Output):
    """reports/ensemble.json: the mean of the families' probabilities, measured as evaluate
    measures each of them, and against the attacks crafted on each member alone."""

    made_by: ClassVar[str] = "the ensemble stage (`dvc repro ensemble`)"
    members: list[str]
    member_accuracy: dict[str, float]
    test_images: int
    sweep_images: int
    clean: Clean
    adversarial: Adversarial  # white-box: the gradients of the averaged probabilities
    transferred_attacks: dict[str, TransferredAttacks]  # member -> its attacks on the ensemble
    corruptions: Curves
    targets: Checks

    @property
    def corruption_accuracy_mean(self) -> float:
        return mean_accuracy(self.corruptions)


class EvaluateSpeed(Measured):
    """reports/measured/evaluate/<name>.json: measured, so it differs run to run."""

    latency_ms_batch1: float
    latency_ms_batch1_p95: float
    throughput_per_s_batch1: float
    large_batch: int
    latency_ms_large_batch: float
    throughput_per_s_large_batch: float
    wall_time_s: float


# --- promote ----------------------------------------------------------------------------------


class LineageMetric:
    """Names of the headline metrics that evaluate copies onto each lineage run, and that
    promotion reads back from the registry's runs (the candidate's and the champion's)."""

    ACCURACY = "evaluate.accuracy"
    ROBUST_ACCURACY = "evaluate.robust_accuracy"
    LATENCY = "evaluate.latency_ms_batch1"
    SIZE = "evaluate.model_bytes"


class RegistryVersion(Output):
    version: str
    run_id: str


class InfraValidation(Output):
    """A candidate loaded the way it will be used, in a fresh process with a clean environment:
    the registered model through MLflow's pyfunc loader and the lineage's int8 TFLite file
    through LiteRT, each answering the same canary images as the Keras model evaluate scored."""

    passed: bool
    canary_images: int
    model_uri: str
    tflite_artifact: str | None
    served_max_difference: float | None  # largest |served probability - Keras probability|
    int8_agreement: float | None  # the int8 labels equal to the Keras model's, as a fraction
    seconds: dict[str, float]  # load and predict times in the fresh process, and its whole run
    environment: list[str]  # the variables' names the fresh process saw (the package sets some)
    reasons: list[str]


class Decision(Output):
    """One family's promotion decision: `champion`, `challenger` or `rejected`, with every
    check the candidate faced and the reasons in words."""

    registered_model: str
    candidate_run_id: str
    decision: Literal["champion", "challenger", "rejected"]
    version: str | None
    previous_champion: RegistryVersion | None = None
    checks: Checks = Field(default_factory=dict)
    infra_validation: InfraValidation | None = None  # run only on a candidate the checks bless
    reasons: list[str]


class Promotion(Output):
    """reports/promotion.json: the thresholds in force and each family's decision."""

    thresholds: dict[str, Any]
    models: dict[str, Decision]
