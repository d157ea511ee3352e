"""The typed schema of params.yaml, validated on load.

Every stage loads the whole file: an unknown key, a wrong type or an out-of-range value anywhere
stops the stage before any work, with one line naming the key and the problem.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.core import layout
from pipeline.core.cli import PipelineError, first_line
from pipeline.core.reproducibility import Mode

MODEL_NAMES = layout.MODEL_NAMES  # the families, named once (pipeline.core.layout)
ModelName = Literal["fnn", "cnn", "lstm"]
if get_args(ModelName) != MODEL_NAMES:
    raise ImportError(f"ModelName {get_args(ModelName)} differs from MODEL_NAMES {MODEL_NAMES}")
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "elu", "selu", "swish"]
Initializer = Literal["he_normal", "he_uniform", "glorot_uniform", "glorot_normal", "lecun_normal"]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Units = Annotated[int, Field(ge=1, le=4096)]
Side = Annotated[int, Field(ge=8, le=4096)]  # an image side in pixels


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataParams(Strict):
    source: Literal["digits", "mnist_5k", "mnist", "fashion_mnist", "npz", "idx", "folder"] = (
        "digits"
    )
    # npz: a file with `x` (N×H×W, N×H×W×1 or N×H×W×3) and `y` arrays; idx: a folder of MNIST
    # IDX files; folder: a folder with one subfolder of image files per class.
    path: str | None = None
    # Derived from the labels (or class folders) when null; when given, checked against them.
    num_classes: int | None = Field(None, ge=2, le=1000)
    # Names of classes 0, 1, ... for npz and idx labels; folders name their classes themselves.
    class_names: tuple[str, ...] | None = None
    # [H, W]: every image resized to it (Pillow's bilinear filter); null: images keep their size,
    # which must then be the same for all.
    image_size: tuple[Side, Side] | None = None
    # auto: RGB when any image has colour, else grayscale.
    color: Literal["auto", "grayscale", "rgb"] = "auto"
    # folder: skip (and count) image files that cannot be decoded instead of stopping.
    skip_unreadable: bool = False
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.source in ("npz", "idx", "folder") and not self.path:
            raise ValueError(f"source '{self.source}' needs data.path")
        if self.class_names is not None and self.source != "npz" and self.source != "idx":
            raise ValueError(f"class_names: source '{self.source}' names its classes itself")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names: names must be distinct")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class ValidateParams(Strict):
    min_rows_per_split: int = Field(50, ge=1)
    max_rows_per_split: int = Field(1_000_000, ge=1)
    # KL divergence (nats) of a split's class proportions from train's: stratified splits are ~0.
    max_class_drift: float = Field(0.01, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ValidateParams:
        if self.min_rows_per_split > self.max_rows_per_split:
            raise ValueError("min_rows_per_split exceeds max_rows_per_split")
        return self


class OptimizerParams(Strict):
    name: Literal["sgd", "adam", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd with momentum, and rmsprop's momentum

    @model_validator(mode="after")
    def _check(self) -> OptimizerParams:
        if self.name == "adam" and self.momentum:
            raise ValueError("momentum applies to sgd and rmsprop, not adam")
        return self


class AdversarialParams(Strict):
    """Adversarial training (Goodfellow et al. 2015; Madry et al. 2018): each batch's loss is
    (1 - weight)·L(clean) + weight·L(attacked), the attack crafted against the current weights."""

    method: Literal["none", "fgsm", "pgd"] = "none"
    epsilon: float = Field(0.1, gt=0, le=1)  # L-infinity radius, pixels in [0, 1]
    steps: int = Field(7, ge=1, le=100)  # pgd only; step size 2.5·epsilon/steps
    weight: float = Field(0.5, gt=0, le=1)


class AugmentParams(Strict):
    """Random changes to each training batch (Keras preprocessing layers, seeded), never at
    inference: the saved model is the same graph with or without them. 0 turns one off."""

    translation: float = Field(0.0, ge=0, le=0.5)  # up to this share of the height and width
    rotation: float = Field(0.0, ge=0, le=180)  # up to this many degrees either way
    zoom: float = Field(0.0, ge=0, lt=1)  # in or out by up to this share
    contrast: float = Field(0.0, ge=0, lt=1)  # contrast scaled by up to 1 ± this
    # How moved pixels are sampled. nearest: whole-pixel moves that keep strokes sharp, as a
    # shifted small image is; bilinear: sub-pixel moves that blur an 8-pixel digit's strokes.
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    # Off unless asked: a mirrored digit or letter is another symbol.
    horizontal_flip: bool = False

    @property
    def active(self) -> bool:
        return any(
            (self.translation, self.rotation, self.zoom, self.contrast, self.horizontal_flip)
        )


class LayerParams(Strict):
    """Knobs every architecture shares, applied to each of its hidden layers."""

    activation: Activation = "relu"
    initializer: Initializer = "he_normal"
    l2: float = Field(0.0, ge=0, le=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    optimizer: OptimizerParams = OptimizerParams()
    adversarial: AdversarialParams = AdversarialParams()
    augment: AugmentParams = AugmentParams()


# Each family's defaults as benchmarks/augment.py chose them over three seeds: FGSM examples in
# every batch and training images shifted by whole pixels (the FNN's and LSTM's also rotated)
# (reports/benchmarks/augment.json).
FGSM_TRAINING = AdversarialParams(method="fgsm", epsilon=0.1, weight=0.5)
NEAREST_SHIFT = AugmentParams(translation=0.15, interpolation="nearest")
NEAREST_SHIFT_AND_ROTATION = NEAREST_SHIFT.model_copy(update={"rotation": 10.0})


class FNNParams(LayerParams):
    # Each family's widths, dropout and L2 as benchmarks/capacity.py chose them
    # (reports/benchmarks/capacity.json).
    hidden_units: list[Units] = Field(default_factory=lambda: [1024, 512], min_length=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    adversarial: AdversarialParams = FGSM_TRAINING
    augment: AugmentParams = NEAREST_SHIFT_AND_ROTATION


class CNNParams(LayerParams):
    filters: list[Units] = Field(default_factory=lambda: [32, 64], min_length=1)
    kernel_size: int = Field(3, ge=1, le=7)
    dense_units: list[Units] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.25, ge=0, lt=1)
    batch_norm: bool = True
    adversarial: AdversarialParams = FGSM_TRAINING
    augment: AugmentParams = NEAREST_SHIFT


class LSTMParams(LayerParams):
    """The LSTM reads an image as a sequence of its rows."""

    units: list[Units] = Field(default_factory=lambda: [256], min_length=1)
    bidirectional: bool = False
    # Unrolled LSTMs convert to builtin TFLite ops; the sequence (image height) is short.
    unroll: bool = True
    dense_units: list[Units] = Field(default_factory=lambda: [128])
    activation: Activation = "tanh"  # of the dense head; the LSTM cells keep their own
    initializer: Initializer = "glorot_uniform"
    dropout: float = Field(0.2, ge=0, lt=1)
    optimizer: OptimizerParams = OptimizerParams(learning_rate=2e-3)
    adversarial: AdversarialParams = FGSM_TRAINING
    augment: AugmentParams = NEAREST_SHIFT_AND_ROTATION


class TrainCommon(Strict):
    epochs: int = Field(80, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    early_stopping_patience: int = Field(10, ge=0)
    loss: Literal["sparse_categorical_crossentropy", "categorical_crossentropy"] = (
        "sparse_categorical_crossentropy"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # none | mirrored (this machine's devices) | multi_worker (the machines in TF_CONFIG);
    # batch_size is per replica (pipeline/distribute.py).
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    # float16 compute, float32 weights: for GPUs with tensor cores; slower on CPUs.
    mixed_precision: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainCommon:
        if self.label_smoothing and self.loss != "categorical_crossentropy":
            raise ValueError("label_smoothing needs loss: categorical_crossentropy")
        return self


class TrainParams(Strict):
    common: TrainCommon = TrainCommon()
    fnn: FNNParams = FNNParams()
    cnn: CNNParams = CNNParams()
    lstm: LSTMParams = LSTMParams()

    def model(self, name: str) -> FNNParams | CNNParams | LSTMParams:
        """The block of family `name` (one of MODEL_NAMES)."""
        if name not in MODEL_NAMES:
            raise PipelineError(f"train: no model family {name!r}; expected one of {MODEL_NAMES}")
        block: FNNParams | CNNParams | LSTMParams = getattr(self, name)
        return block


class AdamParams(Strict):
    learning_rate: float = Field(2e-4, gt=0, le=1)
    beta_1: float = Field(0.5, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)


class GanParams(Strict):
    """A class-conditional DCGAN; judged by the train stage's CNN (see dvc.yaml)."""

    latent_dim: int = Field(64, ge=1, le=1024)
    # Transposed-conv widths; each doubles the map from a seed of ceil(side / 2**len(widths)),
    # and the last map is centre-cropped to the image size.
    generator_widths: list[Units] = Field(default_factory=lambda: [128, 64], min_length=1)
    discriminator_widths: list[Units] = Field(default_factory=lambda: [64, 128], min_length=1)
    discriminator_dropout: float = Field(0.3, ge=0, lt=1)
    generator_optimizer: AdamParams = AdamParams()
    discriminator_optimizer: AdamParams = AdamParams()
    epochs: int = Field(200, ge=1, le=100_000)
    # The training budget in steps (batches): epochs shrink to fit it, so the GAN's cost stops
    # growing with the data (digits: 19 steps an epoch, 200 epochs fit).
    max_steps: int = Field(4000, ge=1)
    batch_size: int = Field(64, ge=2, le=65_536)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5)  # one-sided: real targets 1 - smoothing
    discriminator_steps: int = Field(1, ge=1, le=10)
    sample_every: int = Field(25, ge=1)  # epochs between sample grids
    eval_per_class: int = Field(200, ge=2)  # generated images per class for the metrics
    probe_epochs: int = Field(30, ge=1)  # the small GAN-train / GAN-test classifier


class CompressParams(Strict):
    """Pruning, quantization-aware training and TFLite conversion (tfmot + TFLite)."""

    target_sparsity: float = Field(0.8, gt=0, lt=1)
    prune_epochs: int = Field(30, ge=1)  # fine-tuning while the mask grows, then holds
    # Budgets in steps (batches) for the fine-tuning: epochs shrink to fit, so its cost stops
    # growing with the data (digits: 40 steps an epoch, all 30 and 10 epochs fit).
    prune_max_steps: int = Field(4000, ge=1)
    prune_ramp_fraction: float = Field(0.6, gt=0, le=1)  # share of fine-tuning spent ramping up
    prune_frequency: int = Field(20, ge=1)  # steps between mask updates
    prune_learning_rate: float = Field(1e-3, gt=0, le=1)  # chosen by benchmarks/pruning.py
    qat_epochs: int = Field(10, ge=1)  # enough steps for the activation ranges to settle
    qat_max_steps: int = Field(2000, ge=1)
    qat_learning_rate: float = Field(1e-4, gt=0, le=1)
    representative_samples: int = Field(200, ge=1)  # int8 calibration images from train
    latency_runs: int = Field(200, ge=10)  # single-image calls timed per model
    throughput_batch: int = Field(64, ge=1)


Epsilon = Annotated[float, Field(ge=0, le=1)]
Severity = Annotated[float, Field(gt=0, le=1)]


class EvaluateParams(Strict):
    """Clean performance, robustness and explanations of every classifier (and its TFLite
    variants on the corruptions)."""

    calibration_bins: int = Field(15, ge=2, le=100)
    # L-infinity attack radii on pixels in [0, 1]; accuracy per epsilon is the robustness curve.
    epsilons: list[Epsilon] = Field(
        default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.15, 0.2], min_length=1
    )
    robust_epsilon: Epsilon = 0.1  # the radius of the headline "robust accuracy" (PGD)
    pgd_steps: int = Field(10, ge=1, le=1000)
    pgd_step_size: float | None = Field(None, gt=0, le=1)  # null: 2.5·epsilon/steps
    noise_sigmas: list[Severity] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    # Share of the image one square patch erases; its side rounds to whole pixels.
    occlusion_fractions: list[Severity] = Field(default_factory=lambda: [0.1, 0.25, 0.4])
    shifts: list[Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=lambda: [1, 2])
    rotations: list[Annotated[float, Field(gt=0, le=180)]] = Field(
        default_factory=lambda: [10.0, 20.0]
    )
    # Test images the attacks, corruptions and TFLite sweeps run on (a seeded random subset
    # when the test split is larger); clean metrics always use the whole split.
    max_images: int = Field(2000, ge=10)
    explain_per_class: int = Field(1, ge=1, le=20)  # the first test images of each class
    faithfulness_images: int = Field(100, ge=1)  # test images the deletion curves run on
    # Integrated Gradients: steps to start with, doubled for each image whose completeness error
    # is above targets.evaluate.max_ig_completeness_error, up to ig_max_steps.
    ig_steps: int = Field(64, ge=2, le=4096)
    ig_max_steps: int = Field(4096, ge=2, le=65536)
    smoothgrad_samples: int = Field(25, ge=1, le=1000)
    smoothgrad_sigma: float = Field(0.15, gt=0, le=1)
    occlusion_patch: int = Field(2, ge=1, le=64)
    deletion_steps: int = Field(16, ge=2, le=1024)
    random_orders: int = Field(5, ge=1, le=100)  # random deletion orders averaged as baseline
    latency_runs: int = Field(200, ge=10)
    throughput_batch: int = Field(64, ge=2)

    @model_validator(mode="after")
    def _check(self) -> EvaluateParams:
        if self.robust_epsilon not in self.epsilons:
            raise ValueError(f"robust_epsilon {self.robust_epsilon} is not one of epsilons")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError("epsilons has duplicates")
        if self.ig_max_steps < self.ig_steps:
            raise ValueError(f"ig_max_steps {self.ig_max_steps} is below ig_steps {self.ig_steps}")
        return self


Gamma = Literal["scale"] | Annotated[float, Field(gt=0)]
DEFAULT_GAMMAS: tuple[Gamma, ...] = ("scale", 0.01, 0.001)


class SvcParams(Strict):
    """An RBF support-vector classifier; C and gamma chosen on the validation split."""

    C: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 10.0, 100.0], min_length=1
    )
    # "scale" is scikit-learn's 1 / (features · variance of the pixels)
    gamma: list[Gamma] = Field(default_factory=lambda: list(DEFAULT_GAMMAS), min_length=1)


class BoostingParams(Strict):
    """scikit-learn's histogram gradient boosting, a fixed number of rounds, no early stop."""

    max_iter: int = Field(200, ge=1, le=10_000)
    learning_rate: float = Field(0.1, gt=0, le=1)
    max_leaf_nodes: int = Field(31, ge=2)


class BaselineParams(Strict):
    """Classical models on the same prepared split: the bar a deep model must clear."""

    svc: SvcParams = SvcParams()
    boosting: BoostingParams = BoostingParams()


class PromoteParams(Strict):
    """Blessing, as TFX's Evaluator does it: a candidate becomes `champion` only if it meets
    every absolute threshold and falls no more than `tolerance` below the current champion."""

    models: list[ModelName] = Field(default_factory=lambda: list(get_args(ModelName)), min_length=1)
    min_accuracy: float = Field(0.97, ge=0, le=1)  # test accuracy
    min_robust_accuracy: float = Field(0.4, ge=0, le=1)  # PGD at evaluate.robust_epsilon
    max_model_bytes: int = Field(20_000_000, ge=1)  # the saved Keras model, as served
    max_latency_ms: float = Field(25.0, gt=0)  # single image, Keras under tf.function
    tolerance: float = Field(0.005, ge=0, le=1)  # allowed drop below the champion
    # A family must reach the best baseline's test accuracy (reports/baseline/<name>.json).
    beat_baselines: bool = True
    # Infra validation: the registered model and its int8 TFLite file, each loaded in a fresh
    # process with a clean environment, answer this many test images ...
    canary_images: int = Field(64, ge=1)
    # ... the served probabilities within this of the Keras model's (float32 round-off) ...
    max_served_difference: float = Field(1e-4, gt=0, le=1)
    # ... and the int8 model's labels the Keras model's on at least this fraction of them.
    min_int8_agreement: float = Field(0.95, ge=0, le=1)
    canary_timeout_s: int = Field(600, ge=10)  # the fresh process's whole run


class CompressTargets(Strict):
    """What compression must achieve, checked on every model and reported, never loosened."""

    max_pruning_loss_points: float = Field(1.0, ge=0, le=100)  # Keras float -> pruned
    max_int8_loss_points: float = Field(0.5, ge=0, le=100)  # float TFLite -> each int8 variant
    min_gzip_ratio: float = Field(8.0, gt=0)  # gzipped Keras file / gzipped pruned int8 file
    min_latency_ratio: float = Field(10.0, gt=0)  # Keras under tf.function / int8 TFLite


class EvaluateTargets(Strict):
    # Integrated Gradients' completeness: the largest relative error over the explained images.
    max_ig_completeness_error: float = Field(0.05, gt=0, le=1)


class TargetParams(Strict):
    """Acceptance targets of the compress and evaluate stages (promote's thresholds are its
    own section): each is reported as a check {value, bound, met}."""

    compress: CompressTargets = CompressTargets()
    evaluate: EvaluateTargets = EvaluateTargets()


class TrackingParams(Strict):
    # MLflow experiment; empty means "named after the dataset" (data.source).
    experiment: str | None = None
    # A grid search's name, set per sweep (`dvc exp run --queue -S mlflow.sweep=NAME ...`):
    # every lineage run of it is tagged `sweep`; `python -m pipeline sweep NAME` picks the best.
    sweep: str | None = Field(None, min_length=1, max_length=250)

    @property
    def tags(self) -> dict[str, str]:
        return {"sweep": self.sweep} if self.sweep else {}


class CardParams(Strict):
    """What a model card cannot measure: who answers for the models and what they are for."""

    owner: str = Field("unassigned", min_length=1, max_length=200)
    intended_use: str = Field(
        "Comparing model families on this data, and a baseline to improve on; not validated for "
        "decisions about people.",
        min_length=1,
        max_length=2000,
    )
    # Measured limitations are written from the outputs; these are added after them.
    limitations: list[str] = Field(default_factory=list)


class Params(Strict):
    seed: int = Field(42, ge=0, le=2**31 - 1)
    reproducibility: Mode = "portable"
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    gan: GanParams = GanParams()
    compress: CompressParams = CompressParams()
    evaluate: EvaluateParams = EvaluateParams()
    baseline: BaselineParams = BaselineParams()
    promote: PromoteParams = PromoteParams()
    targets: TargetParams = TargetParams()
    mlflow: TrackingParams = TrackingParams()
    card: CardParams = CardParams()

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.data.source


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise PipelineError(f"{source}: {describe_errors(error)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: cannot read ({type(error).__name__})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path}: invalid YAML{where}") from None
    except RecursionError:
        raise PipelineError(f"{path}: invalid YAML (nested too deeply)") from None
    except ValueError as error:  # a scalar PyYAML cannot convert: 2024-13-01, a 5000-digit int
        raise PipelineError(f"{path}: invalid YAML value ({first_line(error)})") from None
    return parse_params(raw, str(path))


# Values are shown bounded: one built from YAML aliases can print as gigabytes.
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80


def describe_errors(error: ValidationError) -> str:
    """All schema errors on one line: `train.cnn.dropout: must be < 1 (got 1.5)`."""
    parts = []
    for item in error.errors():
        key = ".".join(map(_show_key, item["loc"])) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
            continue
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {_SHOW.repr(value)})"
        parts.append(f"{key}: {message}{shown}")
    return "; ".join(parts)


def _show_key(part: str | int) -> str:
    """A key as written, or quoted if it holds line breaks or other control characters."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as `a.b.c` keys, the form MLflow's compare view lines up."""
    if isinstance(data, BaseModel):
        data = data.model_dump(by_alias=True)
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
