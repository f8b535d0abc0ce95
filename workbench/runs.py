"""Runs started from the workbench, in a background thread of the Streamlit server.

A page asks the `RunManager` to start, stop or resume a run, and from then on only reads the run
directory the trainer writes (`prune_engine.run_dir`), so a reloaded browser, another page or a
restarted app sees the same run. The worker thread only calls the engine; nothing here imports
Streamlit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prune_engine.atomic import read_json
from prune_engine.config import RunConfig
from prune_engine.label_free import DATASET as LABEL_FREE
from prune_engine.run_dir import RunDirectory, RunDirectoryBusy
from prune_engine.trainer import PruningRun

from . import settings

log = logging.getLogger(__name__)

WORKSPACE_ENV = "PRUNE_WORKBENCH_RUNS"
DEFAULT_WORKSPACE = "runs"
EVALUATION_FILE = "workbench_evaluation.json"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LABEL_FREE_METRIC = "ndcg_at_10"
METRIC_NAMES = {"ndcg_at_10": "nDCG@10", "mrr_at_10": "MRR@10", "recall_at_100": "Recall@100", "spearman": "Spearman"}


class WorkbenchError(ValueError):
    """A request the workbench cannot carry out; the message says why and what to do instead."""


def workspace_dir() -> Path:
    """Where runs live: $PRUNE_WORKBENCH_RUNS, else ./runs."""
    return Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser().resolve()


def device_name() -> str:
    import torch

    return f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"


@dataclass(frozen=True)
class Retention:
    """A share of the original's score the pruned model kept, and what that score measures."""

    share: float
    metric: str
    covers: str
    on_documents: bool  # retrieval on the user's documents (label-free), not a task's own test set

    @property
    def where(self) -> str:
        """What the share covers, for a table cell."""
        return f"{'your documents (label-free)' if self.on_documents else self.covers}: {self.metric_name}"

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES.get(self.metric, self.metric)

    def describe(self) -> str:
        if self.on_documents:
            return (f"{self.share:.1%} of the original's {self.metric_name} on your documents (label-free: pseudo-queries "
                    "made from held-out documents it never trained on)")
        return (f"{self.share:.1%} of the original's {self.metric_name} on {self.covers}; this covers that data only, "
                "not retrieval on your own documents")


def _first_retained(report: dict, metric: str | None = None) -> Retention | None:
    """The first figure both models have (Spearman for STS, nDCG@10 for retrieval), or `metric`, in
    the last split of a comparison report (test, where there is one)."""
    for split, block in reversed(report.get("splits", {}).items()):
        for name, row in block["metrics"].items():
            if row.get("retained") is not None and name == (metric or name):
                return Retention(row["retained"], name, f"{report['dataset']}, {split} split", report["dataset"] == LABEL_FREE)
    return None


def retention(*reports: dict | None) -> Retention | None:
    """The retention the workbench quotes: nDCG@10 on the user's documents (a label-free report)
    from the first report that has it, else the first task report's headline figure."""
    given = [report for report in reports if report]
    label_free = (_first_retained(r, LABEL_FREE_METRIC) for r in given if r.get("dataset") == LABEL_FREE)
    task = (_first_retained(r) for r in given if r.get("dataset") != LABEL_FREE)
    return next((found for found in (*label_free, *task) if found is not None), None)


class RunRecord(RunDirectory):
    """A run directory as the pages see it: also the Evaluate page's result and a Runs table row."""

    def evaluation(self) -> dict | None:
        """The Evaluate page's last result: the comparison report and the measured speedup."""
        return read_json(self.path / EVALUATION_FILE)

    def state(self) -> str:
        if _training_here(self.path):  # its thread may not hold the lock yet
            return self.status().get("state", "starting")
        return super().state()

    def can_resume(self) -> bool:
        return self.state() in ("cancelled", "failed", "interrupted") and self.has_checkpoint()

    def retention(self) -> Retention | None:
        """On the user's documents where the run or the Evaluate page measured it, else on task data
        (the Evaluate page's, then the run's own)."""
        report, evaluation = self.report() or {}, self.evaluation() or {}
        return retention(report.get("documents"), evaluation.get("documents"), evaluation.get("report"), report)

    def summary(self) -> dict:
        """One row of the Runs table."""
        status, info, evaluation = self.status(), self.pruning_info() or {}, self.evaluation() or {}
        config = self.config()
        step, total = self.progress()
        after, before = info.get("parameters_after", {}), info.get("parameters_before", {})
        kept = self.retention()
        return {
            "run": self.name,
            "state": self.state(),
            "model": config.model if config else "",
            "documents": settings.document_names(config.documents) if config and config.documents else "",
            "dataset": (config.dataset or "") if config else "",
            "retained": kept.share if kept else None,
            "retained on": kept.where if kept else "",
            "reduction": 1 - after["total"] / before["total"] if after and before else None,
            "parameters": after.get("total"),
            "measured speedup": evaluation.get("speed", {}).get("speedup"),
            "steps": f"{step}/{total}" if total else str(step),
            "structure": info.get("structure_description", ""),
            "updated": f"{datetime.fromtimestamp(status.get('updated', self.path.stat().st_mtime)):%Y-%m-%d %H:%M}",
        }


# One run at a time on this machine's device, whatever workspace or session asked for it.
_LOCK = threading.Lock()
_ACTIVE: dict = {}  # "path" -> Path, "cancel" -> Event, "thread" -> Thread while a run trains here


def _training_here(path: Path) -> bool:
    with _LOCK:
        return _ACTIVE.get("path") == path and _ACTIVE["thread"].is_alive()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(str(text)).name).strip("-").lower()[:30]


class RunManager:
    """Starts, stops and resumes runs of one workspace; process-wide (one per app, not per session)."""

    def __init__(self, workspace: Path):
        self.workspace = Path(workspace).resolve()

    def runs(self) -> list[RunRecord]:
        """Every run directory in the workspace, newest first."""
        if not self.workspace.is_dir():
            return []
        found = [RunRecord(p) for p in self.workspace.iterdir() if p.is_dir() and (p / "status.json").is_file()]
        return sorted(found, key=lambda r: (r.path / "status.json").stat().st_mtime, reverse=True)

    def record(self, name: str) -> RunRecord:
        return RunRecord(self.workspace / name)

    def active(self) -> RunRecord | None:
        """The run training in this process (it may belong to another workspace)."""
        with _LOCK:
            if _ACTIVE and _ACTIVE["thread"].is_alive():
                return RunRecord(_ACTIVE["path"])
        return None

    def _check_free(self) -> None:
        busy = self.active() or next((r for r in self.runs() if r.state() in ("starting", "running")), None)
        if busy is not None:
            step, total = busy.progress()
            raise WorkbenchError(
                f"one run at a time on this device ({device_name()}): '{busy.name}' is training "
                f"(step {step} of {total or '?'}). Stop it on the Train page, or wait for it to finish."
            )

    def new_run_name(self, config: RunConfig) -> str:
        data = config.documents or config.dataset or "run"
        return f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.model)}-{_slug(data)}"

    def start(self, config: RunConfig, name: str = "") -> RunRecord:
        name = name.strip() or self.new_run_name(config)
        if not _RUN_NAME.match(name):
            raise WorkbenchError(
                f"run name {name!r}: use letters, digits, '.', '_' and '-' (up to 100), starting with a letter or digit"
            )
        path = self.workspace / name
        if path.exists():
            raise WorkbenchError(f"a run named '{name}' already exists in {self.workspace}: choose another name")
        self._check_free()
        config = dataclasses.replace(config, output_dir=str(path))
        return self._launch(RunRecord(path), config, resume=False)

    def resume(self, record: RunRecord) -> RunRecord:
        if not record.can_resume():
            raise WorkbenchError(
                f"'{record.name}' cannot be resumed: it is {record.state()}"
                + ("" if record.has_checkpoint() else " and holds no checkpoint")
            )
        config = record.config()
        if config is None:
            raise WorkbenchError(f"'{record.name}' has no readable config.yaml to resume from")
        self._check_free()
        return self._launch(record, config, resume=True)

    def _launch(self, record: RunRecord, config: RunConfig, resume: bool) -> RunRecord:
        global _ACTIVE
        cancel = threading.Event()
        thread = threading.Thread(target=_train, args=(record, config, cancel, resume),
                                  name=f"prune-run-{record.name}", daemon=True)
        with _LOCK:
            if _ACTIVE and _ACTIVE["thread"].is_alive():  # another session started one meanwhile
                raise WorkbenchError(f"one run at a time on this device: '{_ACTIVE['path'].name}' just started")
            record.path.mkdir(parents=True, exist_ok=True)
            previous = record.status()
            record.write_status("starting", previous.get("step", 0), previous.get("total_steps", 0),
                                previous.get("phase", ""), "loading the model and the data")
            _ACTIVE = {"path": record.path, "cancel": cancel, "thread": thread}
        thread.start()
        return record

    def stop(self) -> bool:
        """Asks the active run to stop at its next step; it saves a checkpoint to resume from."""
        with _LOCK:
            if not _ACTIVE or not _ACTIVE["thread"].is_alive():
                return False
            _ACTIVE["cancel"].set()
            return True

    def stopping(self) -> bool:
        with _LOCK:
            return bool(_ACTIVE) and _ACTIVE["thread"].is_alive() and _ACTIVE["cancel"].is_set()


def _train(record: RunRecord, config: RunConfig, cancel: threading.Event, resume: bool) -> None:
    """The worker thread: the engine's run, with any failure written to status.json for the pages."""
    try:
        PruningRun(config, record.path, cancel=cancel).run(resume=resume)
    except RunDirectoryBusy:  # its status.json is the other process's, and says what that run is doing
        log.exception("run %s is busy", record.path)
    except Exception as error:  # the page shows it; the thread must not die silently
        log.exception("run %s failed", record.path)
        if record.status().get("state") != "failed":
            status = record.status()
            record.write_status("failed", status.get("step", 0), status.get("total_steps", 0), status.get("phase", ""),
                                str(error) or type(error).__name__)
