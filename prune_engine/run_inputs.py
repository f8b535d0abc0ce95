"""Everything a run reads before it trains, checked in order of cost.

The run directory is checked first (a finished run, a changed configuration on resume, a folder
the run did not write), then the data and the documents (seconds), and only then the model
(20-40 s for BGE-M3): bad input stops the run before anything expensive, and before it writes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint, latest_usable
from .config import RunConfig
from .data import DataError, TextCorpus, TrainingData, load_texts, load_training_data, resolve_dataset
from .documents import NO_DOCUMENTS_WARNING, DocumentSplit, choose_length, load_documents, split_documents
from .embedder import Embedder
from .importance import starts_ranked
from .latency import LatencyModel, calibrate
from .run_dir import RunDirectory, TrainingError
from .sources import load_embedder
from .targets import SizeTarget

UNRANKED_GATES_NOTE = (
    "the gates start uniform: there are no task pairs to rank heads and neurons by importance "
    "(gate_init: auto). Scored or query-passage pairs (dataset: sts, msmarco or your own) rank them "
    "first, which kept more in benchmarks/RESULTS.md; set gate_init: uniform to silence this note"
)

# Settings that change how a run is logged or reported, not what it trains: a resume may change them.
RESULT_NEUTRAL_KEYS = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "output_dir", "eval_splits",
                                 "eval_dataset", "eval_batch_size", "documents_distractors"})
DEFAULT_LENGTH_CAP = 512  # training length without documents, at most the model's own limit
LATENCY_MODEL_FILE = "latency_model.json"


@dataclass
class RunInputs:
    data: TrainingData  # the task data (the training documents themselves when there is none)
    documents: DocumentSplit | None
    training_documents: list[str]  # drawn into every batch for distillation (none when they are the data)
    teacher: Embedder
    target: SizeTarget
    length: int  # tokens per text in training
    warnings: list[str]

    @property
    def source_config(self):
        return self.teacher.config

    @property
    def output_heads(self) -> int:
        return self.teacher.output_head_parameters()

    @property
    def vocabulary_texts(self) -> list[str]:
        """What a trimmed vocabulary is counted on: the training texts, never the held-out documents."""
        return list(dict.fromkeys(self.data.distinct_texts() + self.training_documents))


def _differences(saved: RunConfig, wanted: RunConfig, prefix: str = "") -> list[str]:
    differences = []
    for spec in dataclasses.fields(saved):
        key, old, new = prefix + spec.name, getattr(saved, spec.name), getattr(wanted, spec.name)
        if spec.name in RESULT_NEUTRAL_KEYS and not prefix:
            continue
        if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
            differences += _differences(old, new, key + ".")
        elif old != new:
            differences.append(f"{key}: {old!r} -> {new!r}")
    return differences


def _check_export_folder(directory: RunDirectory) -> None:
    """A run replaces only an export it wrote: a folder named export/ that is anything else is the user's."""
    export = directory.path / "export"
    if export.exists() and directory.export_dir is None:
        raise TrainingError(f"{export} already exists and was not written by a run here (it has no "
                            "pruning_info.json): move it, or choose another output_dir")


def check_resumable(directory: RunDirectory, config: RunConfig, resume: bool,
                    allow_config_change: bool) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint to continue from (None: a fresh run), and notes about checkpoints passed over.
    Only reads: a refused run leaves the directory as it was."""
    path = directory.path
    if not resume:
        if directory.has_checkpoint() or directory.status().get("state") == "done":
            raise TrainingError(f"{path} already holds a run; resume it (--resume) or choose another output_dir")
        if (path / "export").exists():
            raise TrainingError(f"{path / 'export'} already exists and was not written by a run here: move it, "
                                "or choose another output_dir")
        return None, []
    if directory.status().get("state") == "done":
        raise TrainingError(f"{path} holds a finished run (its export: {path / 'export'}): nothing to resume. "
                            "To train with other settings, choose another output_dir")
    _check_export_folder(directory)
    checkpoint, skipped = latest_usable(directory.checkpoints, require_healthy=True)
    if checkpoint is None:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise TrainingError(f"nothing to resume: {directory.checkpoints} holds no readable checkpoint with healthy "
                            f"weights{detail}")
    saved = directory.config()
    notes = [f"passed over {reason}; resuming from step {checkpoint.step}" for reason in skipped]
    if saved is None:
        notes.append(f"{path / 'config.yaml'} is missing or unreadable, so the settings could not be compared "
                     "with the run's")
    changed = _differences(saved, config) if saved is not None else []
    if changed and not allow_config_change:
        raise TrainingError(
            f"resuming {path} with other settings would not give the run it started: {'; '.join(changed)}. "
            "Resume with the run's own settings (its config.yaml), or allow the change (--allow-config-change)"
        )
    return checkpoint, notes


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _read_data(config: RunConfig) -> tuple[TrainingData, DocumentSplit | None, list[str]]:
    """The task data, the documents' split, and the documents drawn beside the task data."""
    documents = None
    if config.documents is not None:
        documents = split_documents(load_documents(config.documents), config.documents_held_out)
    training_documents = documents.training.texts() if documents is not None else []
    if config.dataset is None:  # the documents are the data
        data, training_documents = TextCorpus(training_documents, documents.training.source), []
    else:
        data = load_training_data(config.dataset, "train")
    if len(data) < 2:
        raise TrainingError(f"{config.dataset}: {len(data)} training example(s); a run needs at least 2")
    _check_data_read_after_training(config)
    return data, documents, training_documents


def _check_data_read_after_training(config: RunConfig) -> None:
    """The vocabulary's corpus (read at export) and the evaluation set (read for the report), checked
    now: a mistyped name or a bad file must not cost the training before it."""
    if config.vocab is not None and config.vocab.corpus is not None:
        load_texts(config.vocab.corpus, "train")
    if config.eval_dataset is not None:
        ref = resolve_dataset(config.eval_dataset)
        if ref.kind == "file" and not Path(ref.argument).expanduser().is_file():
            raise DataError(f"eval_dataset: file not found: {ref.argument}")


def _length(config: RunConfig, teacher: Embedder, documents: DocumentSplit | None, warnings: list[str]) -> int:
    if config.max_length is not None:
        return min(config.max_length, teacher.max_length)
    if documents is None:
        return min(DEFAULT_LENGTH_CAP, teacher.max_length)
    choice = choose_length(teacher.tokenizer, documents.training.texts(), teacher.max_length)
    warnings.append(choice.describe())
    return choice.length


def latency_model(config: RunConfig, teacher: Embedder, directory: RunDirectory) -> LatencyModel | None:
    """This machine's latency cost model for a latency target: calibrated when a run starts and
    kept in the run directory, so a resumed run aims at the same target."""
    if not config.latency_target:
        return None
    path = directory.path / LATENCY_MODEL_FILE
    if path.is_file():
        return LatencyModel.load(path)
    model = calibrate_here(teacher.config, config.latency_batch_size, config.latency_length)
    model.save(path)
    return model


def calibrate_here(encoder_config, batch_size: int, length: int, repeats: int | None = None) -> LatencyModel:
    """The latency model a run on this machine uses: on its GPU if it has one, else on the CPU,
    timed in CPU seconds when torch runs one thread (steady on a shared box). `repeats=None`
    times as many rounds as the calibration's time budget allows."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"
    return calibrate(encoder_config, batch_size, length, device=device, clock=clock, repeats=repeats)


def load_inputs(config: RunConfig, directory: RunDirectory) -> RunInputs:
    _seed_everything(config.seed)
    data, documents, training_documents = _read_data(config)
    teacher = load_embedder(config.model, trust_remote_code=config.trust_remote_code)
    teacher.requires_grad_(False).eval()
    target = config.size_target(teacher.config, teacher.output_head_parameters(),
                                latency_model(config, teacher, directory))
    target.validate(teacher.config, tuple(config.structures))
    warnings: list[str] = []
    if documents is None:
        warnings.append(NO_DOCUMENTS_WARNING)
    if target.learns_masks and config.gate_init == "auto" and not starts_ranked(config, data):
        warnings.append(UNRANKED_GATES_NOTE)
    length = _length(config, teacher, documents, warnings)
    return RunInputs(data, documents, training_documents, teacher, target, length, warnings)
