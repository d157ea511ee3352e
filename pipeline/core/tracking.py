"""MLflow lineage: the one module that talks to MLflow.

Each trained model has one MLflow run, its lineage; the train stage creates it and tags it with
the sha256 of the model file it wrote, and later stages find it by that digest and add to the
same run. No run id lives in a DVC output: the same weights give the same bytes on every machine
and every rerun, so a forced retraining that reproduces them leaves the later stages up to date.
Logging is batched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.core import reproducibility
from pipeline.core.cli import PipelineError
from pipeline.core.io import file_digest
from pipeline.core.layout import PREPARED_DIR, SPLIT_FILE
from pipeline.core.outputs import PREDICTED_COLUMN
from pipeline.core.provenance import dvc_inputs, git_state, package_versions

_CREDENTIALS = re.compile(r"//[^/@\s]+@")  # user[:password]@ inside any URL
_BATCH = 100  # MLflow's log_batch accepts at most 100 params/tags and 1,000 metrics per call


def project_root(start: Path | None = None) -> Path:
    """The repository root. DVC runs queued experiments in copies under
    `<root>/.dvc/tmp/exps/...`; those copies belong to the same project and the same store."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store at the root, by absolute path."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def open_store(uri: str) -> MlflowClient:
    """A client for the store. A SQLite store is first put in write-ahead-log mode (kept in the
    file): stages of experiments queued side by side then read while another writes, and a
    writer waits its turn instead of failing with "database is locked"."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if path.parent.is_dir():
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
    return MlflowClient(uri)


def redact(uri: str) -> str:
    """The URI without any user:password part, for messages."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def unavailable(uri: str, error: BaseException) -> str:
    """`<uri> unavailable: <first line of the root cause>`, with credentials removed."""
    return f"{redact(uri)} unavailable: {reason(error)}"


def reason(error: BaseException) -> str:
    """The first line of the innermost error (SQLAlchemy's wrappers say "autoflush" where
    SQLite said "database is locked"), without credentials, at most 300 characters."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__ or getattr(error, "orig", None)
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        error = inner
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return _CREDENTIALS.sub("//***@", text)[:300]


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # With the default SQLite store, MLflow would put artifacts under the current directory, which
    # for a queued DVC experiment is a temporary copy: pin them next to the store instead.
    default_store = not os.environ.get("MLFLOW_TRACKING_URI")
    location = (project_root() / "mlruns").as_uri() if default_store else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent stage
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


DIGEST_TAG = "model_digest"  # sha256 of the model file a lineage run produced
REPRODUCES_TAG = "reproduces"  # on a run whose model has the bytes of an earlier lineage run's
DVC_EXPERIMENT_TAG = "dvc_experiment"  # set by `dvc exp run` (DVC_EXP_NAME)


@contextlib.contextmanager
def lineage_run(experiment: str, run_name: str, tags: Mapping[str, Any]) -> Iterator[str]:
    """Start a model's lineage run and yield its id; it ends FINISHED, or FAILED on an error.

    The store is checked here, before the stage does any work, so an unreachable tracking
    server fails the stage at once with one line.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    # `mlflow run` exports MLFLOW_RUN_ID for its own run: record it, but start a run per model.
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    all_tags = {**git_state(), **package_versions(), **{k: str(v) for k, v in tags.items()}}
    if project_run:
        all_tags["mlflow_project_run_id"] = project_run
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: the run's DVC experiment
        all_tags[DVC_EXPERIMENT_TAG] = os.environ["DVC_EXP_NAME"]
    inputs = dvc_inputs(str(tags.get("dvc_stage", run_name)))
    all_tags["dvc_inputs_md5"] = inputs.get("digest", inputs.get("error", ""))
    try:
        client = open_store(uri)
        experiment_id = ensure_experiment(client, experiment)
        end_orphans(client, experiment_id)
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags={**all_tags, **_process_tags()}
        )
    except Exception as error:
        raise PipelineError(f"MLflow tracking store {unavailable(uri, error)}") from None
    with run:
        mlflow.log_dict(inputs, "provenance/dvc_inputs.json")
        try:
            yield run.info.run_id
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: KILLED, where other errors give FAILED
            mlflow.end_run("KILLED")
            raise


def record_model(run_id: str, model_file: Path) -> str | None:
    """Tag the run with its model file's digest. Returns the earlier lineage run of the same
    bytes in the same DVC experiment, if any: it stays the model's lineage (the later stages
    logged their results there), and this run is tagged as reproducing it."""
    digest = file_digest(model_file)
    client = MlflowClient(tracking_uri())
    experiment = client.get_run(run_id).info.experiment_id
    earlier = [
        r
        for r in _runs_of(client, [experiment], digest)
        if _in_this_dvc_experiment(r) and r.info.status == "FINISHED" and r.info.run_id != run_id
    ]
    tags = {DIGEST_TAG: digest, **({REPRODUCES_TAG: earlier[0].info.run_id} if earlier else {})}
    set_tags(run_id, tags)
    return earlier[0].info.run_id if earlier else None


def lineage_of(experiment: str, model_file: Path) -> str:
    """The lineage run of the model in `model_file`: the first run of the MLflow experiment
    tagged with the file's digest, this DVC experiment's runs before others' (each
    `dvc exp run` keeps its own lineages, as points of a sweep with the same bytes must), and
    a FINISHED run before any other; in any experiment when none of this one has it."""
    digest = file_digest(model_file)
    uri = tracking_uri()
    try:
        client = open_store(uri)
        found = client.get_experiment_by_name(experiment)
        runs = _runs_of(client, [found.experiment_id], digest) if found else []
        if not runs:  # trained under another experiment name than the params give now
            everywhere = [e.experiment_id for e in client.search_experiments()]
            runs = _runs_of(client, everywhere, digest) if everywhere else []
    except Exception as error:
        raise PipelineError(f"MLflow tracking store {unavailable(uri, error)}") from None
    if not runs:
        raise PipelineError(
            f"{model_file}: no MLflow run in experiment {experiment!r} of {redact(uri)} produced "
            f"it (sha256 {digest[:12]}…); rerun its training and the stages after it "
            "(dvc repro --force --downstream <the stage that trains it>)"
        )
    return runs[0].info.run_id


def _in_this_dvc_experiment(run: Any) -> bool:
    return run.data.tags.get(DVC_EXPERIMENT_TAG, "") == os.environ.get("DVC_EXP_NAME", "")


def _runs_of(client: MlflowClient, experiment_ids: list[str], digest: str) -> list[Any]:
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.{DIGEST_TAG} = '{digest}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    # A stable sort: start order within each group.
    return sorted(runs, key=lambda r: (not _in_this_dvc_experiment(r), r.info.status != "FINISHED"))


@contextlib.contextmanager
def stage_run(lineage_run_id: str, stage: str, tags: Mapping[str, Any]) -> Iterator[str]:
    """A child run of a model's lineage run for one execution of a later stage.

    MLflow params are immutable, and a stage can rerun with new params on the same model: each
    execution gets its own child run for params and details, while the stage copies its
    headline metrics onto the lineage run, where the compare view finds them.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    family = tags.get("model_family")
    inputs = dvc_inputs(f"{stage}@{family}" if family else stage)
    try:
        client = open_store(uri)
        parent = client.get_run(lineage_run_id)
        end_orphans(client, parent.info.experiment_id)
        child = client.create_run(
            parent.info.experiment_id,
            run_name=f"{parent.info.run_name}-{stage}",
            tags={
                "mlflow.parentRunId": lineage_run_id,
                "dvc_stage": stage,
                **git_state(),
                **package_versions(),
                **_process_tags(),
                "dvc_inputs_md5": inputs.get("digest", inputs.get("error", "")),
                **{k: str(v) for k, v in tags.items()},
            },
        )
        client.log_dict(child.info.run_id, inputs, "provenance/dvc_inputs.json")
    except Exception as error:
        raise PipelineError(
            f"MLflow lineage run {lineage_run_id} in {unavailable(uri, error)}"
        ) from None
    status = "FAILED"
    try:
        yield child.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(child.info.run_id, status)


@contextlib.contextmanager
def after_outputs(outputs: list[Path]) -> Iterator[None]:
    """Logging done after a stage's outputs are written: should it fail, say that the outputs
    are complete and stay, in one line (the run itself ends FAILED)."""
    try:
        yield
    except (KeyboardInterrupt, PipelineError):
        raise
    except Exception as error:
        kept = ", ".join(str(p) for p in outputs)
        raise PipelineError(
            f"MLflow logging failed after the outputs were written ({kept} are complete and "
            f"kept): {type(error).__name__}: {reason(error)}"
        ) from None


def _process_tags() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()), **reproducibility.tags()}


def _alive(pid: int) -> bool:
    """Whether `pid` is still a pipeline process on this host (a reused pid is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"pipeline" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the signal check


def end_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs this host started whose process is gone: a stage killed
    with SIGKILL (or a lost machine) cannot end its own run."""
    host = socket.gethostname().replace("'", "")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'",
        max_results=200,
    )
    ended = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "ended_by", f"pid {os.getpid()}: process {pid} gone")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(key, _param_value(value)) for key, value in sorted(params.items())]
    client = MlflowClient(tracking_uri())
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    log_series(run_id, {key: [(step, value)] for key, value in metrics.items()})


def log_series(run_id: str, series: Mapping[str, list[tuple[int, float]]]) -> None:
    """Metric series (step, value) logged in batches, not one call per value."""
    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, int(step))
        for key, points in series.items()
        for step, value in points
    ]
    client = MlflowClient(tracking_uri())
    for start in range(0, len(items), 10 * _BATCH):
        client.log_batch(run_id, metrics=items[start : start + 10 * _BATCH])


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    """Files and folders under `artifact_path`; a folder keeps its own name (`gan/samples/`)."""
    client = MlflowClient(tracking_uri())
    for path in paths:
        if path.is_dir():
            folder = f"{artifact_path}/{path.name}" if artifact_path else path.name
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), artifact_path)


def data_tags(manifest: Mapping[str, Any], seed: int, extra: Mapping[str, str]) -> dict[str, Any]:
    """The tags every lineage run carries: which data (source, content hash, classes by name)
    and seed. The full list of names is the run's inputs.json; the tag holds what fits."""
    names = manifest.get("class_names") or [str(c) for c in range(manifest["num_classes"])]
    return {
        "dataset": manifest["source"],
        "data_hash": manifest["content_hash"],
        "num_classes": len(names),
        "class_names": names_tag(names),
        "seed": seed,
        **extra,
    }


# The prepared splits as MLflow names the contexts a dataset is used in.
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
DIGEST_LENGTH = 36  # MLflow stores at most 36 characters of a dataset digest


def log_datasets(run_id: str, manifest: Mapping[str, Any], data_params: Mapping[str, Any]) -> None:
    """Each prepared split as a dataset input of the run, so the MLflow UI's dataset column and
    run page show which data trained and tested the model: name `<source>-<split>`, digest the
    prepared content hash, source the DVC path with the params that produced it, profile the
    row and class counts."""
    digest = str(manifest["content_hash"])[:DIGEST_LENGTH]
    # Up to 1,000 class names would overflow a source field: they are in the run's inputs.json.
    source = {key: value for key, value in data_params.items() if key != "class_names"}
    inputs = []
    for split, context in DATASET_CONTEXTS.items():
        counts = manifest["splits"][split]
        path = PREPARED_DIR / SPLIT_FILE.format(split=split)
        dataset = Dataset(
            name=f"{manifest['source']}-{split}",
            digest=digest,
            source_type="dvc",
            source=json.dumps({"path": path.as_posix(), "data": source}, default=str),
            schema=json.dumps({"x": {"shape": [-1, *manifest["image_shape"]]}, "y": "int"}),
            profile=json.dumps(
                {"num_rows": counts["count"], "class_counts": counts["class_counts"]}
            ),
        )
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    MlflowClient(tracking_uri()).log_inputs(run_id, datasets=inputs)


def names_tag(names: list[str], limit: int = 6000) -> str:
    """The class names as a JSON list within MLflow's tag limit: as many as fit, then
    "… (N in all)" (the run's inputs.json holds them all)."""
    text = json.dumps(names, ensure_ascii=False)
    shown = list(names)
    while len(text) > limit:
        shown = shown[: len(shown) // 2]
        text = json.dumps([*shown, f"… ({len(names)} in all)"], ensure_ascii=False)
    return text


def tensorflow_requirement() -> str:
    """The TensorFlow wheel this environment runs, pinned: `tensorflow-cpu` by default, or
    `tensorflow` (with or without its CUDA extra) after the README's GPU instructions."""
    for distribution in ("tensorflow-cpu", "tensorflow"):
        with contextlib.suppress(PackageNotFoundError):
            return f"{distribution}=={version(distribution)}"
    raise PipelineError("TensorFlow is not installed as a distribution; cannot log the model")


def model_requirements() -> list[str]:
    """A logged model's pip requirements, pinned. Listing them saves ~10 s of MLflow
    re-importing TensorFlow to infer them."""
    return [tensorflow_requirement(), f"tf_keras=={version('tf_keras')}"]


def require_active(run_id: str) -> None:
    """A model is logged into the active run only: MLflow's log_model takes no run id."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise PipelineError(f"MLflow run {run_id} is not the active run; cannot log its model")


def log_keras_model(run_id: str, model: Any, input_example: Any, name: str = "model") -> str:
    """Log a tf_keras model with its signature into run `run_id`; return its model URI."""
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    require_active(run_id)
    signature = infer_signature(input_example, model.predict(input_example, verbose=0))
    with keras_progress_off():  # MLflow checks the example through Keras's default `predict`
        info = mlflow.tensorflow.log_model(
            model,
            name=name,
            signature=signature,
            input_example=input_example,
            pip_requirements=model_requirements(),
        )
    return info.model_uri


@contextlib.contextmanager
def keras_progress_off() -> Iterator[None]:
    """Keras's progress bars and per-epoch lines go to absl's log (hidden) instead of stdout
    inside, as they were outside afterwards."""
    from tf_keras.utils import (
        disable_interactive_logging,
        enable_interactive_logging,
        is_interactive_logging_enabled,
    )

    shown = is_interactive_logging_enabled()
    disable_interactive_logging()
    try:
        yield
    finally:
        if shown:
            enable_interactive_logging()


def log_sklearn_model(run_id: str, model: Any, input_example: Any, name: str = "model") -> str:
    """Log a scikit-learn classifier with its signature (feature vectors in, each class's
    probability out) into run `run_id`; return its model URI."""
    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    require_active(run_id)
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        # skops: a format that loads without running code; the types named are the model's own
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        signature=infer_signature(input_example, model.predict_proba(input_example)),
        input_example=input_example,
        pyfunc_predict_fn="predict_proba",
        pip_requirements=[f"scikit-learn=={version('scikit-learn')}", f"skops=={version('skops')}"],
    )
    return info.model_uri


class NamedClassifier(PythonModel):
    """A trained classifier as MLflow serves it: images (N×H×W×C floats in [0, 1]) in, a table
    out with the predicted class's name and every class's probability under its name."""

    # MLflow wraps a subclass's predict to check input against its type hints, and warns when
    # the class is defined that these hints are not list[...]. The signature logged with the
    # model is what checks the input here, so the wrapping is skipped (as MLflow's ChatModel
    # subclasses skip it).
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import tf_keras as keras  # the serving process's first TensorFlow import

        self.model = keras.models.load_model(
            context.artifacts["keras_model"], compile=False, safe_mode=True
        )
        inputs = json.loads(Path(context.artifacts["inputs"]).read_text(encoding="utf-8"))
        self.class_names = [str(name) for name in inputs["class_names"]]

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import pandas as pd

        probabilities = self.model.predict(np.asarray(model_input, np.float32), verbose=0)
        table = pd.DataFrame(probabilities, columns=self.class_names)
        predicted = [self.class_names[i] for i in probabilities.argmax(axis=1)]
        table.insert(0, PREDICTED_COLUMN, predicted)
        return table


def log_classifier(
    run_id: str, keras_file: Path, inputs_file: Path, input_example: Any, name: str = "model"
) -> str:
    """Log a saved classifier into run `run_id` as a NamedClassifier, with its signature and
    the inputs file that names its classes; return its model URI."""
    from mlflow.models import infer_signature

    require_active(run_id)
    artifacts = {"keras_model": str(keras_file), "inputs": str(inputs_file)}
    loaded = NamedClassifier()
    loaded.load_context(PythonModelContext(artifacts, None))
    output = loaded.predict(None, input_example)  # the served table, for the signature
    info = mlflow.pyfunc.log_model(
        name=name,
        # A fresh instance: one with the model loaded would pickle a second copy of it.
        python_model=NamedClassifier(),
        artifacts=artifacts,
        signature=infer_signature(input_example, output),
        input_example=input_example,
        pip_requirements=[*model_requirements(), f"pandas=={version('pandas')}"],
    )
    return info.model_uri


def _param_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:6000]  # MLflow's limit on a param value


def require_store() -> None:
    """Fail at once, in one line, when the tracking store cannot be reached."""
    uri = tracking_uri()
    try:
        open_store(uri).search_experiments(max_results=1)
    except Exception as error:
        raise PipelineError(f"MLflow tracking store {unavailable(uri, error)}") from None


def run_summary(run_id: str) -> dict[str, Any]:
    """A run's latest metrics and its tags."""
    run = MlflowClient(tracking_uri()).get_run(run_id)
    return {"metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(key, str(value)) for key, value in tags.items()]
    client = MlflowClient(tracking_uri())
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, tags=items[start : start + _BATCH])


def log_dict(run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    MlflowClient(tracking_uri()).log_dict(run_id, dict(data), artifact_file)


def logged_model_uri(run_id: str) -> str:
    """The `models:/m-…` URI of the model a lineage run logged (MLflow 3 LoggedModel)."""
    outputs = MlflowClient(tracking_uri()).get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    if not models:
        raise PipelineError(f"MLflow run {run_id} logged no model; rerun its train stage")
    return f"models:/{models[-1].model_id}"


def alias_version(name: str, alias: str) -> dict[str, str] | None:
    """The registered model version an alias points to: {version, run_id}, or None."""
    try:
        found = MlflowClient(tracking_uri()).get_model_version_by_alias(name, alias)
    except MlflowException as error:
        # No such registered model, or no such alias on it, yet; anything else is a real fault.
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return {"version": str(found.version), "run_id": str(found.run_id)}


def registered_inputs(name: str, alias: str, inputs_file: str) -> dict[str, Any]:
    """The inputs file the lineage run of registered model `name`'s version at `alias` logged."""
    import mlflow.artifacts

    found = alias_version(name, alias)
    if found is None:
        raise PipelineError(f"registered model {name!r} has no version with alias {alias!r}")
    try:
        inputs: dict[str, Any] = mlflow.artifacts.load_dict(
            f"runs:/{found['run_id']}/{inputs_file}"
        )
    except MlflowException:
        raise PipelineError(
            f"{name}@{alias} (version {found['version']}): its run logged no {inputs_file}; "
            "retrain it with this version of the pipeline"
        ) from None
    return inputs


def load_registered(name: str, alias: str) -> Any:
    """The Keras model inside registered model `name`'s version at `alias`."""
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(f"models:/{name}@{alias}").unwrap_python_model()
    if not isinstance(served, NamedClassifier):
        raise PipelineError(f"{name}@{alias}: not a classifier logged by the train stage")
    return served.model


def register_version(name: str, run_id: str) -> str:
    """The run's model as a version of registered model `name` (reused if already there)."""
    client = MlflowClient(tracking_uri())
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(existing[0].version)
    mlflow.set_tracking_uri(tracking_uri())
    return str(mlflow.register_model(logged_model_uri(run_id), name).version)


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = MlflowClient(tracking_uri())
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def latest_stage_run(lineage_run_id: str, stage: str) -> str | None:
    """The newest finished child run of `stage` under a lineage run, or None."""
    client = MlflowClient(tracking_uri())
    experiment = client.get_run(lineage_run_id).info.experiment_id
    found = client.search_runs(
        [experiment],
        f"tags.`mlflow.parentRunId` = '{lineage_run_id}' and tags.dvc_stage = '{stage}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None


DESCRIPTION_LIMIT = 5000  # characters MLflow's registry keeps in a version's description


def describe_version(name: str, version: str, text: str, source: str) -> None:
    """Set a registered version's description; a text over the registry's limit is cut at a
    line, with a last line naming where the whole of it is."""
    if len(text) > DESCRIPTION_LIMIT:
        tail = f"\n\n… (cut at MLflow's {DESCRIPTION_LIMIT} characters: the whole is {source})"
        text = text[: DESCRIPTION_LIMIT - len(tail)].rsplit("\n", 1)[0] + tail
    MlflowClient(tracking_uri()).update_model_version(name, version, description=text)


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient(tracking_uri()).set_registered_model_alias(name, alias, version)
