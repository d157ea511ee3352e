"""What an interrupted training gives when rerun: one family trained as the train stage trains it
(params.yaml, backed up after every epoch), once uninterrupted and once SIGKILLed after its
backup of a given epoch and rerun, which resumes from that backup. Each in a process of its own,
as a stage is. Prints the epochs trained, the best epoch, the test accuracy and whether the
weights are identical, and writes reports/benchmarks/resume.json.

    python -m benchmarks.resume [--model lstm] [--kill-after 50]

A backup holds the weights, the optimizer, the epoch and early stopping's counters and best
weights; not the random state of shuffling, augmentation and dropout, so the epochs after the
kill see other draws than the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import read_json, write_json
from pipeline.core.params import MODEL_NAMES, load_params
from pipeline.core.provenance import processor

OUTPUT = Path("reports/benchmarks/resume.json")


def train(name: str, folder: Path, result: Path) -> None:
    """The child: train `name` with its backups in `folder`; write its figures to `result`."""
    from pipeline.core.reproducibility import apply

    params = load_params("params.yaml")
    apply(params.reproducibility)  # before TensorFlow's first op, as every stage does
    from pipeline.data.prepared import prepare
    from pipeline.ml.classifier import train_classifier

    prepared = prepare(params.data, params.seed)
    model, _, metrics = train_classifier(
        name, params, prepared.splits, prepared.num_classes, checkpoints=folder
    )
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    write_json(
        result,
        {
            "params": params.train.model(name).model_dump(mode="json"),
            "weights": metrics.parameters,
            "epochs_trained": metrics.epochs_trained,
            "best_epoch": metrics.best_epoch,
            "test_accuracy": metrics.test_accuracy,
            "weights_sha256": digest,
        },
    )


def child(name: str, folder: Path, result: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "benchmarks.resume", "--child", str(folder), str(result)]
    env = {**os.environ, "PIPELINE_BACKUP_EVERY_S": "0"}
    return subprocess.Popen([*command, "--model", name], env=env, stdout=subprocess.DEVNULL)


def killed_after(name: str, folder: Path, epochs: int) -> tuple[int, bool]:
    """Start a training and SIGKILL it once its backup, early stopping's state included, holds
    `epochs` epochs. Returns the epochs the backup held after the kill (another backup may land
    between the poll and the kill), and whether early stopping's state is that backup's."""
    process = child(name, folder, folder.parent / "killed.json")
    try:
        while saved_epoch(folder) < epochs - 1:
            if process.poll() is not None:
                raise SystemExit(f"resume: the training ended before epoch {epochs}")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    from pipeline.ml.training import backed_up_epochs

    backed_up = backed_up_epochs(folder)
    return backed_up, saved_epoch(folder) == backed_up - 1


def saved_epoch(folder: Path) -> int:
    """The 0-based epoch of early stopping's saved state, written after the weights' backup
    (pipeline.ml.training.PeriodicBackup); -1 while there is none."""
    from pipeline.ml.training import early_stopping_file

    try:
        with np.load(early_stopping_file(folder)) as saved:
            return int(saved["epoch"])
    except FileNotFoundError:
        return -1


def finished(name: str, folder: Path, result: Path) -> dict[str, Any]:
    started = time.perf_counter()
    if child(name, folder, result).wait() != 0:
        raise SystemExit(f"resume: training {name} failed")
    return {**read_json(result), "seconds": time.perf_counter() - started}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="lstm")
    # After the default LSTM's best epoch (47 of 57): early stopping's restored count decides.
    parser.add_argument("--kill-after", type=int, default=50)
    parser.add_argument("--child", nargs=2, type=Path, metavar=("FOLDER", "RESULT"))
    args = parser.parse_args(argv)
    if args.child:
        train(args.model, *args.child)
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        whole = finished(args.model, root / "whole", root / "whole.json")
        backed_up, stopping_saved = killed_after(args.model, root / "killed", args.kill_after)
        resumed = finished(args.model, root / "killed", root / "resumed.json")
    report = {
        "machine": {**processor(), "python": platform.python_version()},
        "model": args.model,
        "killed_after_backup_of_epoch": backed_up,
        "early_stopping_state_backed_up": stopping_saved,
        "uninterrupted": whole,
        "resumed": resumed,
        "identical_weights": whole["weights_sha256"] == resumed["weights_sha256"],
    }
    print(f"{args.model}, killed after the backup of epoch {backed_up}, then resumed:")
    print("| run | epochs trained | best epoch | test accuracy | seconds of the process |")
    print("|---|---|---|---|---|")
    for run in ("uninterrupted", "resumed"):
        r = report[run]
        print(
            f"| {run} | {r['epochs_trained']} | {r['best_epoch']} | {r['test_accuracy']:.4f} "
            f"| {r['seconds']:.0f} |"
        )
    print(f"identical weights: {report['identical_weights']}")
    write_json(OUTPUT, report)
    print(f"-> {OUTPUT}")


if __name__ == "__main__":
    main()
