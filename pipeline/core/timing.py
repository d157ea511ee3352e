"""Where a stage's time goes: start-up, imports, data, model compute, logging, writing outputs.

Each stage process writes `reports/measured/timing/<stage>.json` (measured: no DVC output) and
logs the same figures to its model's MLflow run. The package's `__init__` imports this module
first, so "start-up" is the time from the process's start to the first line of the pipeline's
own code (interpreter and `-m` machinery) and "imports" runs from there to the stage's `main()`,
plus any import a stage defers and times.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.core.layout import timing_file

PHASES = ("startup", "imports", "data", "compute", "logging", "outputs")


def process_age(pid: int | str = "self") -> float | None:
    """Seconds since process `pid` (this one by default) started, to the clock tick, from
    Linux's /proc; None where that is unknown."""
    try:
        # Fields after the command name, which may itself hold spaces or parentheses; the
        # process's start time (field 22) is in clock ticks after boot.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_FIRST_LINE = time.perf_counter()
_STARTUP = process_age()


def first_line() -> float:
    """When this process reached the pipeline's first line (`time.perf_counter`, system-wide)."""
    return _FIRST_LINE


def startup() -> float | None:
    return _STARTUP


def restart(first: float, startup_s: float | None) -> None:
    """Count this process's time from another's start: a warm server's child runs the stage of
    the process that called it, and that process's start-up and wait are the stage's."""
    global _FIRST_LINE, _STARTUP
    _FIRST_LINE, _STARTUP = first, startup_s


class StageTimer:
    """Accumulates wall time per phase; whatever no phase claims is reported as `other`."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["startup"] = _STARTUP or 0.0
        self.seconds["imports"] = time.perf_counter() - _FIRST_LINE

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown timing phase {name!r}; expected one of {PHASES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def imports(self, *modules: str) -> None:
        """Import `modules` now, counted as imports: the heavy libraries a stage defers until
        its params and data have been checked (bad input then fails in well under a second)."""
        with self.phase("imports"):
            for module in modules:
                importlib.import_module(module)

    def figures(self) -> dict[str, Any]:
        """The split so far: seconds per phase, `other`, the total and the model-compute share."""
        total = self.seconds["startup"] + (time.perf_counter() - _FIRST_LINE)
        seconds = {k: round(v, 4) for k, v in self.seconds.items()}
        seconds["other"] = round(max(0.0, total - sum(self.seconds.values())), 4)
        return {
            "stage": self.stage,
            "seconds": seconds,
            "total_s": round(total, 4),
            "compute_fraction": round(self.seconds["compute"] / total, 4) if total else 0.0,
            # Stages that need no TensorFlow must not pay its import: checked by the tests.
            "tensorflow_imported": "tensorflow" in sys.modules,
            "mlflow_imported": "mlflow" in sys.modules,
            # When it ended, by the wall clock: how the summary tells a stage that ran.
            "finished_at": round(time.time(), 3),
        }

    def metrics(self, figures: dict[str, Any]) -> dict[str, float]:
        """The figures as MLflow metrics, `timing.<stage>.<phase>_s`; the run is the model's."""
        prefix = f"timing.{self.stage.split('@')[0]}"
        return {
            **{f"{prefix}.{k}_s": float(v) for k, v in figures["seconds"].items()},
            f"{prefix}.total_s": float(figures["total_s"]),
        }

    @property
    def path(self) -> Path:
        return timing_file(self.stage)

    def finish(self, log: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Write reports/measured/timing/<stage>.json; `log` sends the same figures to MLflow."""
        from pipeline.core.io import write_json  # numpy: not paid before the first line is marked

        figures = self.figures()
        if log is not None:
            log(self.metrics(figures))
        write_json(self.path, figures)
        return figures
