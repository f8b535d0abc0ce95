"""The run directory: the contract between the trainer that writes it and everyone who reads it.

The trainer, the CLI and the workbench never share memory, only these files:
`config.yaml` (the resolved configuration), `status.json` (state, step, message, pid),
`metrics.jsonl` and `mask_snapshots.jsonl` (one line per logged step), `final_masks.json`,
`checkpoints/`, `export/`, `report.json` / `report.txt`, and `run.lock` while a process trains.
Every file is written atomically or appended line by line, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .atomic import pid_alive, read_json, remove_stale_partials, write_json_atomic, write_text_atomic
from .checkpoint import checkpoint_folders
from .config import ConfigError, RunConfig, config_yaml, load_config
from .l0 import StructureMasks

RUN_STATES = ("starting", "running", "done", "failed", "cancelled", "interrupted")


class TrainingError(RuntimeError):
    """A run that had to stop or could not start; the message says why and what to change."""


class RunDirectoryBusy(TrainingError):
    """Another live process is training in this run directory; its files are left alone."""


class RunDirectoryLock:
    """`run.lock`, holding its owner's pid, so two processes never train into one directory. It
    appears complete or not at all (a hard link of a finished file); a lock whose process has died
    is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.held = False

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def owner_alive(self) -> bool:
        return pid_alive(self.owner())

    def acquire(self) -> None:
        mine = self.path.with_name(f"run.lock.{os.getpid()}.{threading.get_ident()}")
        mine.write_text(str(os.getpid()))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    owner = self.owner()
                    if pid_alive(owner):
                        raise RunDirectoryBusy(
                            f"{self.path.parent} is being trained by process {owner}: wait for it or stop it, "
                            f"or choose another output_dir (if no such run exists, delete {self.path})"
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
            raise RunDirectoryBusy(f"could not take {self.path}: another process keeps creating it")
        finally:
            mine.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _read_jsonl(path: Path) -> list[dict]:
    """Every complete line: the trainer may be half-way through appending the last one."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def _one_per_step(records: list[dict]) -> list[dict]:
    """The last row written for each step, in step order: rows a resumed run wrote again replace
    the earlier ones."""
    by_step = {record.get("step"): record for record in records}
    return [by_step[step] for step in sorted(by_step, key=lambda s: (s is None, s))]


class RunDirectory:
    """One run's folder; every read goes to disk (a trainer may be writing it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = RunDirectoryLock(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDirectory) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    # ------------------------------------------------------------------ written by the trainer
    def remove_stale_staging(self) -> list[Path]:
        """Removes what processes killed while writing here left behind: half-written checkpoints,
        exports and file rewrites (`atomic.py`); never what a live process is still writing."""
        return remove_stale_partials(self.path) + remove_stale_partials(self.checkpoints)

    def write_status(self, state: str, step: int, total_steps: int, phase: str, message: str = "") -> None:
        status = {"state": state, "step": step, "total_steps": total_steps, "phase": phase, "message": message,
                  "updated": time.time(), "pid": os.getpid()}
        write_json_atomic(self.path / "status.json", status)

    def restart_logs(self, from_step: int) -> None:
        """Keeps the logged rows up to `from_step` (0: none): a fresh run drops what an earlier failed
        one logged here, a resumed run what was logged after its checkpoint."""
        for name in ("metrics.jsonl", "mask_snapshots.jsonl"):
            path = self.path / name
            if path.is_file():
                kept = [r for r in _read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= from_step]
                write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def append_log(self, metrics: dict, gates: dict) -> None:
        for name, record in (("metrics.jsonl", metrics), ("mask_snapshots.jsonl", gates)):
            with (self.path / name).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def write_config(self, config: RunConfig) -> None:
        write_text_atomic(self.path / "config.yaml", config_yaml(config))

    def write_final_masks(self, masks: StructureMasks) -> None:
        write_json_atomic(self.path / "final_masks.json", masks.as_dict())

    def write_report(self, report: dict, text: str) -> None:
        write_json_atomic(self.path / "report.json", report)
        write_text_atomic(self.path / "report.txt", text + "\n")

    # ------------------------------------------------------------------ read back
    def status(self) -> dict:
        return read_json(self.path / "status.json") or {}

    def metrics(self) -> list[dict]:
        return _one_per_step(_read_jsonl(self.path / "metrics.jsonl"))

    def latest_gates(self) -> dict | None:
        snapshots = _one_per_step(_read_jsonl(self.path / "mask_snapshots.jsonl"))
        return snapshots[-1] if snapshots else None

    def config(self) -> RunConfig | None:
        try:
            return load_config(self.path / "config.yaml")
        except ConfigError:
            return None

    def config_text(self) -> str:
        path = self.path / "config.yaml"
        return path.read_text() if path.is_file() else ""

    def report(self) -> dict | None:
        return read_json(self.path / "report.json")

    @property
    def export_dir(self) -> Path | None:
        path = self.path / "export"
        return path if (path / "pruning_info.json").is_file() else None

    def pruning_info(self) -> dict | None:
        return read_json(self.path / "export" / "pruning_info.json")

    def has_checkpoint(self) -> bool:
        return bool(checkpoint_folders(self.checkpoints))

    def state(self) -> str:
        """One of RUN_STATES: "interrupted" when the status says it trains but no live process
        holds the run's lock (the process that ran it was killed)."""
        state = self.status().get("state", "starting")
        if state in ("starting", "running") and not self.lock.owner_alive():
            return "interrupted"
        return state

    def progress(self) -> tuple[int, int]:
        """(step, total steps): the last logged step, the trainer's total once it has set up."""
        status = self.status()
        metrics = self.metrics()
        step = max(status.get("step", 0), metrics[-1]["step"] if metrics else 0)
        return step, status.get("total_steps", 0)
