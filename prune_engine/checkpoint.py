"""Training checkpoints in formats that cannot run code: tensors in safetensors, the rest in JSON.

A checkpoint is a folder `checkpoints/step_<n>/` holding `tensors.safetensors` and `state.json`.
It is written under a hidden name carrying the writer's process id and renamed into place, so it
appears complete or not at all; a write that fails (a full disk) removes what it wrote. Loading
reads nothing executable (a `state.pt` pickle planted in a checkpoint folder is never opened),
and a checkpoint that cannot be read, or whose weights diverged, is passed over for the one
before it. Rotation keeps the newest healthy checkpoint even when newer ones diverged, so a run
that went wrong always has one to go back to.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import remove_stale_partials, staging_folder

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_STEP_FOLDER = re.compile(r"^step_(\d{7})$")
# Weights of a trained encoder are O(1); one this large means the run diverged even if still finite.
DIVERGED_WEIGHT = 1e4


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the folder and the cause."""


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    step: int
    phase: str
    state: dict[str, Any]  # nested dicts, lists, numbers, strings and tensors
    loss: float  # the total loss of the last step before the checkpoint (nan if none yet)

    def weights_healthy(self) -> bool:
        """Finite, not diverged weights and a finite last loss: a checkpoint worth going back to."""
        if not math.isfinite(self.loss) and self.step > 0:
            return False
        for tensor in self.state["student"].values():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return False
            if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > DIVERGED_WEIGHT:
                return False
        return True


# --------------------------------------------------------------------------- JSON + tensors


def _flatten(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Nested state -> JSON, each tensor replaced by a reference into `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _flatten(v, tensors, f"{path}.{k}") for k, v in value.items()}
        if all(isinstance(k, int) for k in value):  # optimizer states are keyed by parameter number
            return {"__int_keys__": {str(k): _flatten(v, tensors, f"{path}.{k}") for k, v in value.items()}}
        raise CheckpointError(f"cannot store a dict with mixed key types at {path}")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise CheckpointError(f"cannot store a {type(value).__name__} at {path}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if "__tuple__" in value:
        return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
    if "__int_keys__" in value:
        return {int(k): _unflatten(v, tensors) for k, v in value["__int_keys__"].items()}
    return {k: _unflatten(v, tensors) for k, v in value.items()}


def rng_state() -> dict:
    """Every random generator a run draws from, so a resumed run draws what an uninterrupted one would."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


# --------------------------------------------------------------------------- folders


def step_folder(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:07d}"


def save_checkpoint(checkpoints: Path, checkpoint: Checkpoint, keep: int) -> Path:
    """Writes `step_<n>/` atomically and keeps the newest `keep` checkpoints."""
    target = step_folder(checkpoints, checkpoint.step)
    staging = staging_folder(target)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"step": checkpoint.step, "phase": checkpoint.phase, "loss": checkpoint.loss,
                "healthy": checkpoint.weights_healthy(), "state": _flatten(checkpoint.state, tensors, "state")}
    try:
        staging.mkdir(parents=True)
        save_file(tensors, staging / TENSORS_FILE)
        (staging / STATE_FILE).write_text(json.dumps(skeleton))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"could not write the checkpoint {target}: {error.strerror or error}. Free disk "
                              f"space or make {checkpoints} writable, then resume the run (--resume)") from None
    _rotate(checkpoints, keep)
    return target


def _recorded_healthy(folder: Path) -> bool:
    """Whether the checkpoint said, when written, that its weights were healthy (no tensors read)."""
    try:
        return json.loads((folder / STATE_FILE).read_text()).get("healthy") is True
    except (OSError, ValueError, AttributeError):
        return False


def _rotate(checkpoints: Path, keep: int) -> None:
    """Removes all but the newest `keep` checkpoints and the newest healthy one."""
    folders = checkpoint_folders(checkpoints)
    newest_healthy = next((f for f in reversed(folders) if _recorded_healthy(f)), None)
    for old in folders[:-keep]:
        if old != newest_healthy:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    try:
        tensors = load_file(folder / TENSORS_FILE)
        skeleton = json.loads((folder / STATE_FILE).read_text())
        return Checkpoint(skeleton["step"], skeleton["phase"], _unflatten(skeleton["state"], tensors),
                          float(skeleton["loss"]))
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise CheckpointError(f"{folder} is not a readable checkpoint ({type(error).__name__}: {error})") from None


def checkpoint_folders(checkpoints: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first. Staging folders of writers that died are removed."""
    if not checkpoints.is_dir():
        return []
    remove_stale_partials(checkpoints)
    return sorted(p for p in checkpoints.iterdir() if p.is_dir() and _STEP_FOLDER.match(p.name))


def latest_usable(checkpoints: Path, require_healthy: bool = False) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that loads (and, if asked, has healthy weights), and why newer ones
    were passed over."""
    skipped = []
    for folder in reversed(checkpoint_folders(checkpoints)):
        try:
            checkpoint = load_checkpoint(folder)
        except CheckpointError as error:
            skipped.append(str(error))
            continue
        if require_healthy and not checkpoint.weights_healthy():
            skipped.append(f"{folder}: its weights are not finite or have diverged")
            continue
        return checkpoint, skipped
    return None, skipped
