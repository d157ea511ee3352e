"""What the last `dvc repro` did, on one screen, and the DAG as a picture.

One row per stage of dvc.yaml: whether it ran (it finished after `since`, when the repro
started) or was cached, its seconds and its headline metric, all read from what the stages
wrote (reports/measured/timing/ and their outputs). The same annotations go onto the DAG
(`dvc dag --dot`, drawn with Graphviz's `tred` and `dot`) in reports/measured/dag.svg, which the
report page shows beside it. The report stage, the DAG's last, prints it at its end, so a plain
`dvc repro` that reaches it ends with it; `python -m pipeline summary` prints it at any time.
Every stage depends on pipeline/core, so a change here reruns the whole DAG: keep it stable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from pipeline.core import layout
from pipeline.core.cli import PipelineError
from pipeline.core.io import read_json, write_text
from pipeline.core.outputs import (
    BaselineReport,
    CompressReport,
    EnsembleReport,
    EvaluateReport,
    GanMetrics,
    TrainMetrics,
)
from pipeline.core.timing import process_age


class StageRun(BaseModel):
    """A stage as the last repro left it."""

    model_config = ConfigDict(frozen=True)

    stage: str
    ran: bool | None  # None: no --since, so whether it ran in a repro is unknown
    seconds: float | None
    finished_at: float | None
    headline: str


def headline(stage: str) -> str:
    """The one figure a reader looks for first, from the stage's own output; "–" if missing."""
    try:
        return _headline(*stage.partition("@")[::2])
    except (PipelineError, OSError, KeyError, ValueError):
        return "–"


def _headline(name: str, family: str) -> str:
    if name == "ingest":
        splits = read_json(layout.PREPARED_DIR / layout.MANIFEST)["splits"]
        return f"{sum(split['count'] for split in splits.values())} images"
    if name == "validate":
        passed = read_json(layout.VALIDATION_RESULTS)["success"]
        return "every expectation met" if passed else "expectations failed"
    if name == "baseline":
        reports = [BaselineReport.read(layout.baseline_report(b)) for b in layout.BASELINE_NAMES]
        return f"best test accuracy {max(r.test_accuracy for r in reports):.4f}"
    if name == "train":
        return f"test accuracy {TrainMetrics.read(layout.train_metrics(family)).test_accuracy:.4f}"
    if name == "gan":
        agreement = GanMetrics.read(layout.GAN_METRICS).classifier_agreement
        return f"classifier agreement {agreement:.3f}"
    if name == "compress":
        int8 = CompressReport.read(layout.compress_report(family)).supported.get("int8")
        return "int8: not supported" if int8 is None else f"int8 accuracy {int8.accuracy:.4f}"
    if name == "evaluate":
        robust = EvaluateReport.read(layout.evaluate_report(family)).adversarial.robust_accuracy
        return f"PGD accuracy {robust:.4f}"
    if name == "ensemble":
        return f"accuracy {EnsembleReport.read(layout.ENSEMBLE_REPORT).clean.accuracy:.4f}"
    if name == "report":
        return str(layout.REPORT_PAGE)
    return "–"


def stage_run(stage: str, since: float | None) -> StageRun:
    try:
        figures = read_json(layout.timing_file(stage))
    except (OSError, ValueError):
        # Not run here: in this repro, DVC found its outputs up to date (from a commit or the
        # cache), so they are what it reports.
        ran = None if since is None else False
        return StageRun(
            stage=stage, ran=ran, seconds=None, finished_at=None, headline=headline(stage)
        )
    finished = figures.get("finished_at")
    ran = None if since is None or finished is None else finished >= since
    return StageRun(
        stage=stage,
        ran=ran,
        seconds=figures.get("total_s"),
        finished_at=finished,
        headline=headline(stage),
    )


def dag_dot() -> str:
    # This environment's DVC, whether or not its folder is on the PATH.
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc) if dvc.exists() else "dvc", "dag", "--dot"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError(f"dvc dag --dot failed: {result.stderr.strip()[-300:]}")
    return result.stdout


def stages_of(dot: str) -> list[str]:
    """The stages in `dvc dag --dot` order: DVC lists the nodes before the edges."""
    return re.findall(r'^"([^"]+)";$', dot, flags=re.M)


def status(run: StageRun) -> str:
    if run.ran is None:
        return "never ran" if run.seconds is None else "last ran"
    return "ran" if run.ran else "cached"


def table(runs: Sequence[StageRun]) -> str:
    lines = [f"{'stage':<16}{'':<10}{'seconds':>9}  headline"]
    for run in runs:
        seconds = "–" if run.seconds is None else f"{run.seconds:.1f}"
        lines.append(f"{run.stage:<16}{status(run):<10}{seconds:>9}  {run.headline}")
    ran = [run for run in runs if run.ran]
    if ran:
        total = sum(run.seconds or 0.0 for run in ran)
        lines.append(f"{len(ran)} ran ({total:.0f} s of stage time), {len(runs) - len(ran)} cached")
    return "\n".join(lines)


def annotated(dot: str, runs: Sequence[StageRun]) -> str:
    """`dot` with each stage's node labelled with its status and seconds, and filled by it."""
    fills = {"ran": "#c8e6c9", "cached": "#eeeeee", "last ran": "#eeeeee", "never ran": "#ffffff"}
    for run in runs:
        seconds = "" if run.seconds is None else f"\\n{run.seconds:.1f} s"
        label = f"{run.stage}\\n{status(run)}{seconds}"
        attributes = f'[label="{label}", style=filled, fillcolor="{fills[status(run)]}"]'
        dot = dot.replace(f'"{run.stage}";', f'"{run.stage}" {attributes};', 1)
    return dot.replace("{", '{\nnode [shape=box, fontname="Helvetica", fontsize=11];', 1)


def draw(dot: str) -> str | None:
    """The DAG as SVG, transitive edges removed (`tred`), laid out by `dot`; None without
    Graphviz."""
    if shutil.which("dot") is None or shutil.which("tred") is None:
        return None
    try:
        reduced = subprocess.run(["tred"], input=dot, capture_output=True, text=True, check=True)
        drawn = subprocess.run(
            ["dot", "-Tsvg"], input=reduced.stdout, capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as error:
        why = error.stderr.strip()[-300:]
        raise PipelineError(f"Graphviz's {error.cmd[0]} failed: {why}") from None
    return drawn.stdout


def write_picture(svg: str) -> None:
    """reports/measured/dag.svg, and the script that hands it to the report page."""
    write_text(layout.DAG_PICTURE, svg)
    key = json.dumps(layout.measured_key(layout.DAG_PICTURE))
    script = f"(window.measured ??= {{}})[{key}] = {json.dumps({'svg': svg})};\n"
    write_text(layout.measured_script(layout.DAG_PICTURE), script)


def repro_started() -> float | None:
    """When the `dvc` process running this one started (seconds since the epoch): the start of
    the `dvc repro` or `dvc exp run` whose stage this is; None outside one."""
    try:
        for process in psutil.Process().parents():
            args = process.cmdline()
            # The console script (the kernel names a process after the script it runs, and its
            # interpreter's arguments name it), a frozen binary, or `python -m dvc`.
            named = process.name() == "dvc" or any(Path(arg).name == "dvc" for arg in args[:2])
            if named or args[1:3] == ["-m", "dvc"]:
                return started_at(process)
    except psutil.Error:
        return None
    return None


def started_at(process: psutil.Process) -> float:
    """When `process` started, to the clock tick. psutil's create_time adds Linux's boot time,
    which /proc/stat gives in whole seconds: a stage the previous repro finished just before
    could read as this one's."""
    age = process_age(process.pid)
    return float(process.create_time()) if age is None else time.time() - age


def show(since: float | None) -> None:
    """Print the table of the repro that started at `since` and draw its DAG."""
    dot = dag_dot()
    runs = [stage_run(stage, since) for stage in stages_of(dot)]
    print(table(runs))
    svg = draw(annotated(dot, runs))
    if svg is None:
        # An older picture would show another repro's runs as this one's.
        for path in (layout.DAG_PICTURE, layout.measured_script(layout.DAG_PICTURE)):
            path.unlink(missing_ok=True)
        print("summary: no Graphviz (dot, tred) here: no DAG picture (`make setup` installs it)")
        return
    write_picture(svg)
    print(f"summary: the DAG -> {layout.DAG_PICTURE} (on the report page beside it)")
