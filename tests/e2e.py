"""Helpers for end-to-end tests: a throw-away copy of the project, run through real DVC."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO


def lineage_id(project: Path, family: str, uri: str | None = None) -> str:
    """The lineage run of models/<family> (the generator for "gan") in the project's store or
    at `uri`: the first finished run tagged with the sha256 of the model file's bytes."""
    from mlflow.tracking import MlflowClient

    folder = project / "models" / family
    model = folder / ("generator.keras" if family == "gan" else "model.keras")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    client = MlflowClient(uri or f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"tags.model_digest = '{digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    assert runs, f"no finished run is tagged with the digest of {model}"
    return runs[0].info.run_id


# Small enough for CI's two cores, large enough to learn something.
TINY_TRAIN: dict[str, dict[str, Any]] = {
    # Eight epochs: the default FGSM examples and shifted images need twice plain training's four.
    "common": {"epochs": 8, "batch_size": 32, "early_stopping_patience": 3},
    "fnn": {"hidden_units": [32]},
    # Batch norm's moving averages need more steps than a 4-epoch run has.
    "cnn": {"filters": [8, 16], "dense_units": [32], "batch_norm": False},
    "lstm": {"units": [32], "dense_units": []},
}
# The same models trained plainly, without the defaults' shifted and attacked batches, in the
# four epochs plain training needs: for the end-to-end tests whose subject lies beyond training
# (CI's two cores spend a quarter of the time on them).
PLAIN_FAMILY = {"augment": {"translation": 0.0, "rotation": 0.0}, "adversarial": {"method": "none"}}
TINY_PLAIN_TRAIN = {
    "common": {**TINY_TRAIN["common"], "epochs": 4},
    **{family: {**TINY_TRAIN[family], **PLAIN_FAMILY} for family in ("fnn", "cnn", "lstm")},
}
TINY_COMPRESS = {
    "prune_epochs": 2,
    "prune_frequency": 5,
    "qat_epochs": 1,
    "representative_samples": 20,
    "latency_runs": 10,
}
TINY_EVALUATE = {
    "epsilons": [0.0, 0.1],
    "robust_epsilon": 0.1,
    "pgd_steps": 3,
    "noise_sigmas": [0.2],
    "occlusion_fractions": [0.25],
    "shifts": [1],
    "rotations": [15],
    "faithfulness_images": 20,
    "ig_steps": 32,
    "smoothgrad_samples": 3,
    "deletion_steps": 8,
    "random_orders": 2,
    "latency_runs": 10,
    "throughput_batch": 8,
}
TINY_GAN = {
    "latent_dim": 16,
    "generator_widths": [32, 16],
    "discriminator_widths": [16, 32],
    "epochs": 3,
    "sample_every": 2,
    "eval_per_class": 20,
    "probe_epochs": 2,
}


def project_files() -> list[str]:
    """What a clone would hold: tracked files plus new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def declared_outputs() -> list[Path]:
    """Every output dvc.yaml declares (outs, metrics, plots), for every stage and family."""
    from pipeline.core import layout

    stages = ("ingest", "validate", "baseline", "gan", "ensemble", "report")
    families = ("train", "compress", "evaluate")
    return [
        *(path for stage in stages for path in layout.stage_outputs(stage)),
        *(
            path
            for stage in families
            for name in layout.MODEL_NAMES
            for path in layout.stage_outputs(stage, name)
        ),
    ]


def copy_project(target: Path) -> Path:
    """The project as a clone holds it, minus every committed stage output: what a test's run
    then finds under models/ and reports/ is what that run wrote."""
    outputs = declared_outputs()
    for name in project_files():
        if any(Path(name) == out or out in Path(name).parents for out in outputs):
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)
    git(target, "init", "-q")
    commit(target, "copy of the project")
    return target


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def commit(cwd: Path, message: str) -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "--allow-empty", "-m", message)


def update_params(project: Path, changes: dict[str, Any]) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    merge(params, changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def merge(base: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def run(
    project: Path, *command: str, timeout: int = 900, pipes: bool = True
) -> subprocess.CompletedProcess:
    """Run a command the way a user would in the project, with this environment's tools.

    `pipes=False` is for commands that leave daemons behind (`dvc queue start`): a daemon
    that inherits an output pipe keeps `run` waiting until the daemon exits, so the output
    goes through files instead.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PIPELINE_DEBUG"):
        env.pop(key, None)
    if pipes:
        return subprocess.run(
            list(command), cwd=project, env=env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(
            list(command), cwd=project, env=env, stdout=out, stderr=err, timeout=timeout
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


TINY_PROMOTE = {
    "min_accuracy": 0.3,
    "min_robust_accuracy": 0.0,
    "max_latency_ms": 1000.0,
    # Four epochs of training are no match for the SVC: the rule is tested in test_promote.
    "beat_baselines": False,
}
TINY_BASELINE: dict[str, dict[str, Any]] = {
    "svc": {"C": [1.0, 10.0], "gamma": ["scale"]},
    "boosting": {"max_iter": 20},
}
# The end-to-end run's params over params.yaml's: the run the golden digests come from.
TINY_PARAMS = {
    "train": TINY_TRAIN,
    "gan": TINY_GAN,
    "compress": TINY_COMPRESS,
    "evaluate": TINY_EVALUATE,
    "promote": TINY_PROMOTE,
    "baseline": TINY_BASELINE,
}
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by `make test`
# No sandbox as root; no background requests to Google's hosts, which are unreachable here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_hosts(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (Linux's /proc/net tables)."""
    import socket

    hosts = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            words = (bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            raw = b"".join(words)
            hosts.add(socket.inet_ntop(family, raw))
    return hosts


@contextlib.contextmanager
def server(
    project: Path, command: list[str], ready_url: str, timeout: float = 180, clean: bool = False
):
    """Start a server process in the project; wait until `ready_url` answers; stop it after.
    `clean`: without the variables this test process set up (as a user's shell would be)."""
    import time
    import urllib.request

    env = dict(os.environ)
    if clean:
        for key in ("TF_USE_LEGACY_KERAS", "MLFLOW_TRACKING_URI", "PYTHONPATH"):
            env.pop(key, None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if not clean:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    log = (project / f"server-{command[1]}.log").open("w")
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        f"{' '.join(command)} did not come up: "
                        + (project / f"server-{command[1]}.log").read_text()[-2000:]
                    ) from None
                time.sleep(1)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def weight_digest(path: Path) -> str:
    """A digest of a Keras model's weight arrays (the file itself holds a save date)."""
    import hashlib

    import numpy as np
    import tf_keras as keras

    digest = hashlib.sha256()
    for array in keras.models.load_model(path, compile=False).get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


GOLDEN = REPO / "tests/golden_digests.json"


def golden_digests(project: Path) -> dict[str, str]:
    """Each family's weights and the GAN's generator (the arrays, not the file, which holds a
    save date), and the bytes of every int8 TFLite file and of the metrics NumPy and SciPy
    compute on their own (the baselines', the GAN's Fréchet distances)."""
    from pipeline.core.io import file_digest
    from pipeline.core.layout import MODEL_NAMES as families

    keras_files = [*(f"models/{m}/model.keras" for m in families), "models/gan/generator.keras"]
    files = [
        *(f"models/compressed/{m}/int8.tflite" for m in families),
        "reports/baseline/svc.json",
        "reports/baseline/boosting.json",
        "reports/gan/metrics.json",
    ]
    return {
        **{name: weight_digest(project / name) for name in keras_files},
        **{name: file_digest(project / name) for name in files},
    }
