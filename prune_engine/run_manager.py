"""The workbench's engine side: runs started in a background thread, and run directories read back.

A page asks the `RunManager` to start, stop or resume a run, and from then on only reads the run
directory the trainer writes (status.json, metrics.jsonl, mask_snapshots.jsonl, export/), so a
reloaded browser, another page or a restarted app sees the same run. Nothing here imports
Streamlit, and the worker thread only calls the engine. The rest of the module is what the pages
compute that is not UI: a model's shape without its weights, the size panel's figures, the run
configuration built from the page's choices, path checks, timing and similarity.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .accounting import (
    SizeReport,
    Structure,
    attention_parameters_per_head,
    count_parameters,
    ffn_parameters_per_neuron,
    layer_fixed_parameters,
    size_report,
)
from .config import RunConfig, TargetParams, VocabConfig, apply_override, build_dataclass, load_config
from .data import KNOWN_DATASETS, load_eval_data, load_training_data, texts_of
from .embedder import Embedder
from .encoding_cache import EncodingCache
from .evaluate import compare
from .l0 import StructureMasks
from .modeling_prunable_encoder import PrunableEncoderConfig
from .presets import ORIGINAL_PRESETS, bge_m3_config
from .sources import (
    BGE_M3_HEAD_FILES,
    BGE_M3_HUB_ID,
    MINILM_ALIAS,
    ModelSourceError,
    encoder_config_from_hf,
    resolve_model_dir,
)
from .trainer import PruningRun, RunDirectoryBusy, pid_alive

log = logging.getLogger(__name__)

WORKSPACE_ENV = "PRUNE_WORKBENCH_RUNS"
DEFAULT_WORKSPACE = "runs"
EVALUATION_FILE = "workbench_evaluation.json"
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_minilm.yaml"
SPEED_TEXTS = 256  # texts timed per model for the measured speedup
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class WorkbenchError(ValueError):
    """A request the workbench cannot carry out; the message says why and what to do instead."""


def workspace_dir() -> Path:
    """Where runs live: $PRUNE_WORKBENCH_RUNS, else ./runs."""
    return Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser().resolve()


# --------------------------------------------------------------------------- models without weights


@dataclass(frozen=True)
class ModelShape:
    """What the size panel needs of a model: its architecture and its output heads' size."""

    source: str
    config: PrunableEncoderConfig
    output_head_parameters: int = 0
    note: str = ""

    def describe(self) -> str:
        config = self.config
        heads, ffn = max(config.heads_per_layer, default=0), max(config.intermediate_sizes, default=0)
        return (
            f"{config.num_hidden_layers} layers x {heads} heads, FFN {ffn}, hidden {config.hidden_size}, "
            f"vocabulary {config.vocab_size:,} ({config.source_model_type})"
        )


def _cached_hub_file(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def hub_model_cached(repo_id: str) -> bool:
    """Config and weights both in the local Hugging Face cache: loadable without the network."""
    return _cached_hub_file(repo_id, "config.json") is not None and any(
        _cached_hub_file(repo_id, name) for name in ("model.safetensors", "pytorch_model.bin")
    )


def default_model_source() -> str:
    """BGE-M3 where it can be trained here (a GPU and the weights cached), else the bundled demo."""
    import torch

    return BGE_M3_HUB_ID if torch.cuda.is_available() and hub_model_cached(BGE_M3_HUB_ID) else MINILM_ALIAS


def _is_hub_id(source: str) -> bool:
    return source != MINILM_ALIAS and bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def _head_parameters(files: list[Path]) -> int:
    import torch

    return sum(
        tensor.numel() for path in files for tensor in torch.load(path, map_location="cpu", weights_only=True).values()
    )


def model_shape(source: str) -> ModelShape:
    """A model's shape from its config.json alone, so the size panel never loads (or downloads) weights."""
    source = source.strip()
    if not _is_hub_id(source):
        model_dir = resolve_model_dir(source)
        config = encoder_config_from_hf(json.loads((model_dir / "config.json").read_text()))
        heads = [model_dir / name for name in BGE_M3_HEAD_FILES.values() if (model_dir / name).is_file()]
        return ModelShape(source, config, _head_parameters(heads))
    config_file = _cached_hub_file(source, "config.json")
    if config_file is None and source == BGE_M3_HUB_ID:
        return ModelShape(source, bge_m3_config(), note=(
            "not in the local Hugging Face cache: sizes use BGE-M3's known shape without its sparse and "
            "multi-vector heads; the weights (2.3 GB) download when a run starts"
        ))
    if config_file is None:
        config_file = _download_config(source)
    config = encoder_config_from_hf(json.loads(config_file.read_text()))
    heads = [path for name in BGE_M3_HEAD_FILES.values() if (path := _cached_hub_file(source, name))]
    return ModelShape(source, config, _head_parameters(heads))


def _download_config(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelSourceError(
            f"'{repo_id}' is not a model in the local cache and its config could not be fetched from the "
            f"Hugging Face hub ({type(error).__name__}: {reason}). Check the id, or use a local model "
            f"directory or '{MINILM_ALIAS}'"
        ) from None


# --------------------------------------------------------------------------- configuration and size


def default_config(model: str) -> RunConfig:
    """The Configure page's starting values: the demo config for the bundled MiniLM, the engine's
    defaults (half the encoder, STS) otherwise; bf16 autocast where the GPU has it."""
    import torch

    if model == MINILM_ALIAS and DEMO_CONFIG.is_file():
        config = load_config(DEMO_CONFIG)
    else:
        config = RunConfig(model=model, dataset="sts", target_params=TargetParams(fraction=0.5))
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        config = dataclasses.replace(config, precision="amp_bf16")
    return config


def build_run_config(values: dict, overrides: str = "") -> RunConfig:
    """The page's choices plus any `key=value` lines, validated exactly as a YAML file would be."""
    data = copy.deepcopy(values)
    for line in overrides.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            apply_override(data, line.strip())
    if data.get("fixed_masks"):  # a given structure replaces the page's target
        data.pop("target_model", None)
        data.pop("target_params", None)
    return build_dataclass(RunConfig, data)


def describe_target(config: RunConfig) -> str:
    if config.fixed_masks is not None:
        return f"the structure in {config.fixed_masks}"
    if config.target_model is not None:
        t = config.target_model
        return f"{t.n_layers} layers x {t.n_heads} heads x FFN {t.intermediate_size}"
    t = config.target_params
    amount = f"{t.fraction:.0%} of the" if t.fraction is not None else f"{t.count:,}"
    return f"{amount} {t.of} parameters"


def describe_duration(config: RunConfig) -> str:
    count, unit = config.duration()
    return f"{count} {'steps' if unit == 'ba' else 'epochs'}"


def check_target(config: RunConfig, shape: ModelShape) -> None:
    """Raises TargetError when the run's target does not fit the model (larger than it, or empty)."""
    target = config.size_target(shape.config, shape.output_head_parameters)
    if target is None:
        fixed_structure(config, shape)
    else:
        target.validate(shape.config, tuple(config.structures))


def fixed_structure(config: RunConfig, shape: ModelShape) -> Structure:
    """The structure a `fixed_masks` file (a run's final_masks.json) keeps of this model."""
    path = Path(config.fixed_masks).expanduser()
    try:
        masks = StructureMasks.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as error:
        raise WorkbenchError(f"fixed_masks {path}: cannot read it as a final_masks.json ({error})") from None
    if [len(h) for h in masks.heads] != list(shape.config.heads_per_layer):
        raise WorkbenchError(f"fixed_masks {path} was made for another model than {shape.source}")
    return masks.kept_structure(shape.config.vocab_size)


def check_dataset(dataset: str) -> str:
    """Loads local and bundled data now, so a bad file is reported on the page rather than when the
    run starts; hub data sets (which may need a download) are checked when the run starts."""
    name = dataset.strip()
    if name != "demo" and (name in KNOWN_DATASETS or name.startswith("mteb/")):
        return f"{name}: loaded from the shared data folder or the hub when the run starts"
    data = load_training_data(name, "train")
    return f"{len(data):,} training examples ({data.kind.replace('_', ' ')}) from {data.source}"


def even_structure(config: PrunableEncoderConfig, encoder_budget: int) -> Structure:
    """The uniform structure that keeps every layer and spends an encoder budget evenly: heads
    scaled like the budget, the FFN width filling the rest. The size panel's stand-in for a
    parameter budget, whose real structure the run decides."""
    hidden, head = config.hidden_size, config.attention_head_size
    full_heads, full_ffn = max(config.heads_per_layer), max(config.intermediate_sizes)
    layers = config.num_hidden_layers
    per_head, per_neuron = attention_parameters_per_head(hidden, head), ffn_parameters_per_neuron(hidden)
    variable = encoder_budget - layers * layer_fixed_parameters(hidden)
    fraction = min(1.0, max(0.0, variable / (layers * (full_heads * per_head + full_ffn * per_neuron))))
    heads = round(full_heads * fraction)
    ffn = int((variable / layers - heads * per_head) // per_neuron)
    return Structure.uniform(layers, heads, min(full_ffn, max(0, ffn)), config.vocab_size)


def planned_structure(config: RunConfig, shape: ModelShape) -> tuple[Structure, bool]:
    """(structure, exact): the target's structure, or for a parameter budget its even stand-in."""
    model = shape.config
    if config.fixed_masks is not None:
        return fixed_structure(config, shape), True
    if config.target_model is not None:
        t = config.target_model
        return Structure.uniform(t.n_layers, t.n_heads, t.intermediate_size, model.vocab_size), True
    budget = config.size_target(model, shape.output_head_parameters)
    encoder_budget = budget.parameters
    if budget.scope == "total":  # what the embeddings and output heads take is not the encoder's
        counts = count_parameters(model, None, shape.output_head_parameters)
        encoder_budget -= counts.total - counts.encoder
    return even_structure(model, encoder_budget), False


def planned_size(config: RunConfig, shape: ModelShape, sequence_length: int,
                 vocab_size: int | None = None) -> tuple[SizeReport, bool]:
    """The size panel's report (against the untrimmed, unpruned model); `vocab_size` after trimming."""
    structure, exact = planned_structure(config, shape)
    if vocab_size is not None:
        structure = dataclasses.replace(structure, vocab_size=vocab_size)
    return size_report(shape.config, structure, sequence_length, shape.output_head_parameters), exact


def vocabulary_plan(model: str, dataset: str, trust_remote_code: bool = False):
    """The vocabulary a run with `vocab: {}` keeps: the tokens of its training texts (prune_engine.vocab)."""
    from transformers import AutoTokenizer

    from .vocab import plan_for_run

    hub = _is_hub_id(model)  # counted with the cached tokenizer only: the page must not wait on the network
    try:
        tokenizer = AutoTokenizer.from_pretrained(model if hub else resolve_model_dir(model), local_files_only=hub,
                                                  trust_remote_code=trust_remote_code)
    except OSError as error:
        where = "in the local Hugging Face cache" if hub else "loadable"
        raise ModelSourceError(f"{model}: its tokenizer, needed to count the vocabulary, is not {where} "
                               f"({str(error).splitlines()[0][:160]})") from None
    return plan_for_run(tokenizer, VocabConfig(), texts_of(load_training_data(dataset, "train")))


def preset_reports(sequence_length: int) -> list[tuple[str, dict, SizeReport]]:
    """The original design's three BGE-M3 presets with their true sizes."""
    config = bge_m3_config()
    reports = []
    for name, preset in ORIGINAL_PRESETS.items():
        structure = Structure.uniform(preset["n_layers"], preset["n_heads"], preset["intermediate_size"], config.vocab_size)
        reports.append((name, preset, size_report(config, structure, sequence_length)))
    return reports


# --------------------------------------------------------------------------- run directories


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or being replaced this instant


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


def export_info(directory: Path) -> dict | None:
    """An export's pruning_info.json: where it came from, what it kept, whether it needs remote code."""
    return _read_json(directory / "pruning_info.json")


@dataclass(frozen=True)
class RunRecord:
    """One run directory, read from disk on every call (the trainer may be writing it)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def status(self) -> dict:
        return _read_json(self.path / "status.json") or {}

    def metrics(self) -> list[dict]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def latest_gates(self) -> dict | None:
        snapshots = _read_jsonl(self.path / "mask_snapshots.jsonl")
        return snapshots[-1] if snapshots else None

    def config(self) -> RunConfig | None:
        try:
            return load_config(self.path / "config.yaml")
        except ValueError:
            return None

    def config_text(self) -> str:
        path = self.path / "config.yaml"
        return path.read_text() if path.is_file() else ""

    @property
    def export_dir(self) -> Path | None:
        path = self.path / "export"
        return path if (path / "pruning_info.json").is_file() else None

    def pruning_info(self) -> dict | None:
        return export_info(self.path / "export")

    def evaluation(self) -> dict | None:
        """The Evaluate page's last result: the comparison report and the measured speedup."""
        return _read_json(self.path / EVALUATION_FILE)

    def report(self) -> dict | None:
        """The comparison the trainer writes when a run ends (report.json)."""
        return _read_json(self.path / "report.json")

    def has_checkpoint(self) -> bool:
        return any((self.path / "checkpoints").glob("step_*/state.pt"))

    def state(self) -> str:
        """starting | running | done | failed | cancelled | interrupted (the process that ran it is gone)."""
        status = self.status()
        state = status.get("state", "starting")
        if state in ("starting", "running") and not (_training_here(self.path) or _foreign_live(status)):
            return "interrupted"
        return state

    def progress(self) -> tuple[int, int]:
        """(step, total steps): the last logged step, the trainer's total once it has set up."""
        status = self.status()
        metrics = self.metrics()
        step = max(status.get("step", 0), metrics[-1]["step"] if metrics else 0)
        return step, status.get("total_steps", 0)

    def can_resume(self) -> bool:
        return self.state() in ("cancelled", "failed", "interrupted") and self.has_checkpoint()

    def summary(self) -> dict:
        """One row of the Runs table."""
        status, info, evaluation = self.status(), self.pruning_info() or {}, self.evaluation() or {}
        config = _read_yaml(self.path / "config.yaml")
        step, total = self.progress()
        after, before = info.get("parameters_after", {}), info.get("parameters_before", {})
        return {
            "run": self.name,
            "state": self.state(),
            "model": config.get("model", ""),
            "dataset": config.get("dataset", ""),
            "steps": f"{step}/{total}" if total else str(step),
            "parameters": after.get("total"),
            "reduction": 1 - after["total"] / before["total"] if after and before else None,
            "structure": info.get("structure_description", ""),
            "score retained": headline_retained(evaluation.get("report") or self.report() or {}),
            "measured speedup": evaluation.get("speed", {}).get("speedup"),
            "updated": f"{datetime.fromtimestamp(status.get('updated', self.path.stat().st_mtime)):%Y-%m-%d %H:%M}",
        }


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def headline_retained(report: dict) -> float | None:
    """What the pruned model retained of the first figure both have (Spearman for STS, nDCG@10 for
    retrieval), in the last split of a comparison report (test, where there is one)."""
    for block in reversed(report.get("splits", {}).values()):
        for row in block["metrics"].values():
            if row.get("retained") is not None:
                return row["retained"]
    return None


def _write_status(path: Path, state: str, message: str) -> None:
    status = {"state": state, "step": 0, "total_steps": 0, "phase": "", "message": message,
              "updated": time.time(), "pid": os.getpid()}
    previous = _read_json(path / "status.json") or {}
    status.update({k: previous[k] for k in ("step", "total_steps", "phase") if k in previous})
    temporary = path / "status.json.tmp"
    temporary.write_text(json.dumps(status, indent=2))
    os.replace(temporary, path / "status.json")


# --------------------------------------------------------------------------- the run manager

# One run at a time on this machine's device, whatever workspace or session asked for it.
_LOCK = threading.Lock()
_ACTIVE: dict = {}  # "path" -> Path, "cancel" -> Event, "thread" -> Thread while a run trains here


def _training_here(path: Path) -> bool:
    with _LOCK:
        return _ACTIVE.get("path") == path and _ACTIVE["thread"].is_alive()


def _foreign_live(status: dict) -> bool:
    """A run whose status names another live process (the CLI, a second app) is training there."""
    pid = status.get("pid")
    return pid != os.getpid() and pid_alive(pid)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(str(text)).name).strip("-").lower()[:30]


def device_name() -> str:
    import torch

    return f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"


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
        busy = self.active() or next((r for r in self.runs() if _foreign_live(r.status())
                                      and r.status().get("state") in ("starting", "running")), None)
        if busy is not None:
            step, total = busy.progress()
            raise WorkbenchError(
                f"one run at a time on this device ({device_name()}): '{busy.name}' is training "
                f"(step {step} of {total or '?'}). Stop it on the Train page, or wait for it to finish."
            )

    def new_run_name(self, config: RunConfig) -> str:
        return f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.model)}-{_slug(config.dataset)}"

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
        thread = threading.Thread(target=_train, args=(record.path, config, cancel, resume),
                                  name=f"prune-run-{record.name}", daemon=True)
        with _LOCK:
            if _ACTIVE and _ACTIVE["thread"].is_alive():  # another session started one meanwhile
                raise WorkbenchError(f"one run at a time on this device: '{_ACTIVE['path'].name}' just started")
            record.path.mkdir(parents=True, exist_ok=True)
            _write_status(record.path, "starting", "loading the model and the data")
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


def _train(path: Path, config: RunConfig, cancel: threading.Event, resume: bool) -> None:
    """The worker thread: the engine's run, with any failure written to status.json for the pages."""
    try:
        PruningRun(config, path, cancel=cancel).run(resume=resume)
    except RunDirectoryBusy:  # its status.json is the other process's, and says what that run is doing
        log.exception("run %s is busy", path)
    except Exception as error:  # the page shows it; the thread must not die silently
        log.exception("run %s failed", path)
        if (_read_json(path / "status.json") or {}).get("state") != "failed":
            _write_status(path, "failed", str(error) or type(error).__name__)


# --------------------------------------------------------------------------- paths and export


def resolve_destination(text: str, workspace: Path) -> Path:
    """A relative path lands inside the workspace and may not climb out of it; writing anywhere
    else takes an explicit absolute path."""
    text = text.strip()
    if not text:
        raise WorkbenchError("give a destination directory, e.g. exports/my-model")
    path = Path(text).expanduser()
    if path.is_absolute():
        return path.resolve()
    workspace = workspace.resolve()
    resolved = (workspace / path).resolve()
    if not resolved.is_relative_to(workspace):
        raise WorkbenchError(
            f"{text} points outside the workspace {workspace}; to write there, give the full absolute path"
        )
    return resolved


def directory_listing(path: Path) -> list[dict]:
    """Every file under `path` with its size, for the Export page."""
    return [
        {"file": str(p.relative_to(path)), "bytes": p.stat().st_size}
        for p in sorted(path.rglob("*")) if p.is_file()
    ]


def zip_directory(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                archive.write(file, Path(path.name) / file.relative_to(path))
    return buffer.getvalue()


def loading_snippet(path: Path, remote_code: bool) -> str:
    flag = ", trust_remote_code=True" if remote_code else ""
    return (
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(path)!r}{flag})\n"
        'embeddings = model.encode(["A sentence to embed."])'
    )


# --------------------------------------------------------------------------- evaluation and similarity


def measure_speedup(original: Embedder, pruned: Embedder, texts: list[str], batch_size: int = 32,
                    repeats: int = 5) -> dict:
    """Best wall-clock time of each model encoding the same texts, after a warm-up batch. The two
    are timed in turns, so a busy machine slows both alike rather than whichever ran second."""
    for model in (original, pruned):
        model.encode(texts[:batch_size], batch_size)
    best = {"original": float("inf"), "pruned": float("inf")}
    for _ in range(repeats):
        for name, model in (("original", original), ("pruned", pruned)):
            start = time.perf_counter()
            model.encode(texts, batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    return {"texts": len(texts), "batch_size": batch_size, "repeats": repeats, "original_s": best["original"],
            "pruned_s": best["pruned"], "speedup": best["original"] / max(best["pruned"], 1e-9)}


def evaluate_run(record: RunRecord, original: Embedder, pruned: Embedder, dataset: str,
                 splits: tuple[str, ...] = ("test",), batch_size: int = 32) -> dict:
    """The evaluator's comparison plus a measured speedup on the same data; kept in the run dir.
    `original` is the run's model as loaded from its source: its encodings are cached on disk, so
    evaluating a second run pruned from it on the same data encodes only the pruned model."""
    config = record.config()
    cache = EncodingCache(resolve_model_dir(config.model), original) if config is not None else None
    report = compare(original, pruned, dataset, splits, batch_size, original_cache=cache)
    texts = texts_of(load_eval_data(dataset, splits[0]))[:SPEED_TEXTS]
    result = {"dataset": dataset, "report": report, "speed": measure_speedup(original, pruned, texts, batch_size),
              "created": time.time()}
    (record.path / EVALUATION_FILE).write_text(json.dumps(result, indent=2))
    return result


def evaluation_rows(report: dict) -> list[dict]:
    """The evaluator's report as table rows: split, metric, original, pruned, retained."""
    return [
        {"split": split, "metric": name, "original": row.get("original"), "pruned": row["pruned"],
         "retained": row.get("retained")}
        for split, block in report["splits"].items()
        for name, row in block["metrics"].items()
    ]


def similarity_matrix(embedder: Embedder, texts: list[str]) -> np.ndarray:
    vectors = embedder.encode(texts)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors @ vectors.T


def rank_passages(embedder: Embedder, query: str, passages: list[str]) -> list[tuple[int, float]]:
    """(passage index, cosine) best first."""
    scores = similarity_matrix(embedder, [query, *passages])[0, 1:]
    return [(int(i), float(scores[i])) for i in np.argsort(-scores, kind="stable")]
