"""The one run configuration, validated where it is built.

It reads the YAML shape of the original design (`target_model: {n_layers, n_heads,
intermediate_size}`, `optimizer.lr`, `batch_size`, `max_length`, `max_duration: "1000ba"`,
`precision`) plus what this project adds (a parameter budget, loss weights, phases). An unknown
key or a value of the wrong type stops with the key's dotted name and what is valid; any key can
be overridden as `dotted.key=value`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import SPLITS, STS_LANGUAGES
from .l0 import STRUCTURES
from .label_free import MAX_DISTRACTORS
from .latency import LatencyModel
from .targets import (
    Alignment,
    ArchitectureTarget,
    FixedStructure,
    LatencyTarget,
    ParameterBudget,
    TargetError,
)

PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")
GATE_INITS = ("auto", "importance", "uniform")
_DURATION = re.compile(r"^\s*(\d+)\s*(ba|ep)\s*$")
TARGET_KEYS = ("target_model", "target_params", "target_speedup", "target_latency", "fixed_masks")
# Keys of earlier versions, and what replaced them.
RENAMED_KEYS = {"distill_dataset": "documents", "distill_batch_size": "documents_per_batch"}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the valid choices."""


def _range(low: float | None = None, high: float | None = None, low_open: bool = False) -> dict:
    """Field metadata: the valid range of a number, checked (with finiteness) where the config is built."""
    return {"range": (low, high, low_open)}


POSITIVE = _range(0.0, low_open=True)
NON_NEGATIVE = _range(0.0)
SHARE = _range(0.0, 1.0)
AT_LEAST_ONE = _range(1)
AT_LEAST_TWO = _range(2)


def _check_ranges(obj, prefix: str = "") -> None:
    """Every numeric field with a `range` in its metadata, in this dataclass and the nested ones."""
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        key = prefix + spec.name
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".")
            continue
        if "range" not in spec.metadata or value is None:
            continue
        low, high, low_open = spec.metadata["range"]
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            bounds = ("(" if low_open else "[") + f"{low if low is not None else '-inf'}, " \
                f"{high if high is not None else 'inf'}" + ("]" if high is not None else ")")
            raise ConfigError(f"{key} must be in {bounds}, got {value}")


@dataclass
class TargetModel:
    """A uniform target architecture, as in the original design."""

    n_layers: int = field(metadata=AT_LEAST_ONE)
    n_heads: int = field(metadata=AT_LEAST_ONE)
    intermediate_size: int = field(metadata=AT_LEAST_ONE)


@dataclass
class TargetParams:
    """A parameter budget: `fraction` of, or `count` parameters in, the encoder or the whole model."""

    fraction: float | None = None
    count: int | None = None
    of: str = "encoder"

    def __post_init__(self):
        if (self.fraction is None) == (self.count is None):
            raise ConfigError("target_params needs exactly one of 'fraction' (e.g. 0.5) or 'count' (e.g. 150000000)")
        if self.of not in ("encoder", "total"):
            raise ConfigError(f"target_params.of must be 'encoder' or 'total', got {self.of!r}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"target_params.fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"target_params.count must be at least 1, got {self.count}")


@dataclass
class OptimizerConfig:
    lr: float = field(default=2.0e-5, metadata=POSITIVE)  # encoder weights
    # L0 gate logits (Adam): gates decide within a few hundred steps without saturating
    gate_lr: float = field(default=0.1, metadata=POSITIVE)
    lagrangian_lr: float = field(default=0.5, metadata=POSITIVE)  # multipliers, by gradient ascent
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    warmup_fraction: float = field(default=0.1, metadata=SHARE)
    max_grad_norm: float = field(default=1.0, metadata=NON_NEGATIVE)  # 0: no clipping


@dataclass
class LossConfig:
    """Loss weights. The default recipe is distillation first: it keeps the pruned model's vectors
    usable against the original's index; the task loss only sharpens the task data's own task."""

    distill_cosine: float = field(default=1.0, metadata=NON_NEGATIVE)  # student vs teacher vector of a text
    distill_similarity: float = field(default=1.0, metadata=NON_NEGATIVE)  # in-batch similarity structure
    distill_tokens: float = field(default=1.0, metadata=NON_NEGATIVE)  # every token's last hidden state
    distill_layers: float = field(default=0.0, metadata=NON_NEGATIVE)  # every kept layer's output, per token
    distill_sparse: float = field(default=0.1, metadata=NON_NEGATIVE)  # BGE-M3 lexical weights
    distill_colbert: float = field(default=0.1, metadata=NON_NEGATIVE)  # BGE-M3 multi-vector
    task: float = field(default=0.03, metadata=NON_NEGATIVE)  # CoSENT (scored pairs), InfoNCE (query-passage)
    temperature: float = field(default=0.05, metadata=POSITIVE)  # InfoNCE; BGE uses 0.02
    cosent_scale: float = field(default=20.0, metadata=POSITIVE)


@dataclass
class VocabConfig:
    """Vocabulary trimming (`vocab.py`): tokens counted on `corpus` (a file or data set name; the
    run's task data and training documents when unset) plus the STS-B train and dev sentences of
    each of `languages`."""

    corpus: str | None = None
    min_freq: int = 1
    top_n: int | None = None
    languages: list[str] = field(default_factory=list)
    keep_first: int = 0  # also keep the original's first ids: its most frequent pieces

    def __post_init__(self):
        if self.min_freq < 1:
            raise ConfigError(f"vocab.min_freq must be at least 1, got {self.min_freq}")
        if self.top_n is not None and self.top_n < 1:
            raise ConfigError(f"vocab.top_n must be at least 1 (or left out), got {self.top_n}")
        if self.keep_first < 0:
            raise ConfigError(f"vocab.keep_first must be 0 or more, got {self.keep_first}")
        unknown = sorted(set(self.languages) - set(STS_LANGUAGES))
        if unknown:
            raise ConfigError(f"vocab.languages: unknown {unknown}; choose from {list(STS_LANGUAGES)}")


@dataclass
class ServingConfig:
    """Serving formats written beside the export (serving.py)."""

    onnx: bool = False  # also onnx/model.onnx (fp32) and onnx/model_qint8.onnx (int8), both scored
    int8_threshold: float = field(default=0.99, metadata=_range(0.0, 1.0, low_open=True))  # share of fp32 int8 must keep


@dataclass
class RunConfig:
    """The default recipe is the one that measured best for retrieval against an existing index
    (benchmarks/RESULTS.md): distil on the documents the model serves, distillation first (the
    task loss at 0.03, token-level distillation on), prune heads and neurons only, half the run
    learning masks."""

    model: str = "minilm"
    # The texts the model will serve (a file, BEIR folder or data set, or a list of them;
    # documents.py): distilled on, with a held-out share measuring what was kept. Without them
    # retrieval on the user's data is not protected.
    documents: str | list[str] | None = None
    documents_per_batch: int = field(default=16, metadata=AT_LEAST_ONE)
    documents_held_out: float = field(default=0.05, metadata=_range(0.0, 0.5, low_open=True))
    # Training documents sampled as distractors for the held-out ones' pseudo-queries (label_free.py).
    documents_distractors: int = field(default=MAX_DISTRACTORS, metadata=NON_NEGATIVE)
    dataset: str | None = "sts"  # optional task data: scored pairs, query-passage pairs or text
    eval_dataset: str | None = None  # defaults to the training dataset
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"])  # [] skips those figures
    target_model: TargetModel | None = None
    target_params: TargetParams | None = None
    # A latency target on this machine: a speedup over the unpruned model, or seconds per batch of
    # latency_batch_size x latency_length tokens, from a cost model the run calibrates (latency.py).
    target_speedup: float | None = field(default=None, metadata=_range(1.0, low_open=True))
    target_latency: float | None = field(default=None, metadata=POSITIVE)
    latency_batch_size: int = field(default=32, metadata=AT_LEAST_ONE)
    latency_length: int = field(default=128, metadata=AT_LEAST_ONE)
    # Kept heads / FFN neurons per layer rounded to these multiples (align_ffn None: 64 on a GPU, 1 on a CPU).
    align_heads: int = field(default=1, metadata=AT_LEAST_ONE)
    align_ffn: int | None = field(default=None, metadata=AT_LEAST_ONE)
    structures: list[str] = field(default_factory=lambda: ["heads", "ffn"])
    fixed_masks: str | None = None  # a final_masks.json: skip learning masks, prune to it and fine-tune
    # Where the head and FFN gates start: "importance" (ranked by the task loss's gradient importance
    # on seeded batches of the task data; needs pairs), "uniform" (all at P(kept) 0.99), or "auto":
    # importance when the task data are scored or query-passage pairs, uniform otherwise.
    gate_init: str = "auto"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = field(default=16, metadata=AT_LEAST_TWO)  # the losses compare texts within a batch
    max_length: int | None = field(default=None, metadata=AT_LEAST_TWO)  # None: chosen from the documents
    max_duration: str = "1000ba"
    # Share of the run that learns masks; the rest fine-tunes the fixed structure.
    mask_fraction: float = field(default=0.5, metadata=_range(0.0, 1.0, low_open=True))
    # Share of the mask phase over which the target ramps from the full size.
    target_warmup_fraction: float = field(default=0.5, metadata=_range(0.0, 1.0, low_open=True))
    precision: str = "fp32"
    gradient_accumulation: int = field(default=1, metadata=AT_LEAST_ONE)
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = True
    max_train_examples: int | None = field(default=None, metadata=AT_LEAST_TWO)
    seed: int = 42
    log_every: int = field(default=10, metadata=AT_LEAST_ONE)
    checkpoint_every: int = field(default=200, metadata=AT_LEAST_ONE)
    keep_checkpoints: int = field(default=2, metadata=AT_LEAST_ONE)
    eval_batch_size: int = field(default=64, metadata=AT_LEAST_ONE)
    teacher_cache_mb: int = field(default=2048, metadata=NON_NEGATIVE)  # teacher outputs kept for texts seen again
    output_dir: str = "runs/run"
    trust_remote_code: bool = False
    vocab: VocabConfig | None = None
    serving: ServingConfig = field(default_factory=ServingConfig)

    def __post_init__(self):
        targets = [key for key in TARGET_KEYS if getattr(self, key) is not None]
        if len(targets) != 1:
            given = f" (given: {', '.join(targets)})" if targets else ""
            raise ConfigError(
                "give exactly one target: target_model {n_layers, n_heads, intermediate_size}, target_params "
                "{fraction | count, of: encoder | total}, target_speedup, target_latency (seconds per batch) or "
                f"fixed_masks (a final_masks.json){given}"
            )
        if self.documents is None and self.dataset is None:
            raise ConfigError("give documents (the texts the model will serve: recommended) or a dataset to train on")
        unknown = sorted(set(self.structures) - set(STRUCTURES))
        if unknown or not self.structures:
            raise ConfigError(f"structures: unknown {unknown}; choose a non-empty subset of {list(STRUCTURES)}")
        unknown = sorted(set(self.eval_splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"eval_splits: unknown {unknown}; choose from {list(SPLITS)} (or [] for none)")
        if self.gate_init not in GATE_INITS:
            raise ConfigError(f"gate_init must be one of {list(GATE_INITS)}, got {self.gate_init!r}")
        if self.gate_init == "importance" and self.dataset is None:
            raise ConfigError("gate_init: importance ranks heads and neurons by the task loss, which needs task data: "
                              "set dataset (e.g. sts: STS-B train pairs) or use gate_init: uniform")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.duration()  # validates max_duration
        _check_ranges(self)

    def duration(self) -> tuple[int, str]:
        """(count, unit): "1000ba" -> (1000, "ba") batches, "2ep" -> (2, "ep") epochs."""
        match = _DURATION.match(str(self.max_duration))
        if not match or int(match.group(1)) < 1:
            raise ConfigError(f"max_duration must look like '1000ba' (batches) or '2ep' (epochs), got {self.max_duration!r}")
        return int(match.group(1)), match.group(2)

    @property
    def latency_target(self) -> bool:
        return self.target_speedup is not None or self.target_latency is not None

    def alignment(self, on_gpu: bool) -> Alignment:
        return Alignment(self.align_heads, self.align_ffn or (64 if on_gpu else 1))

    def size_target(self, config, output_head_parameters: int = 0, latency_model: LatencyModel | None = None):
        """The target the run prunes to, for a model of this `config` (its output heads' size counts
        towards a total budget; a latency target needs this machine's calibrated `latency_model`)."""
        if self.latency_target:
            if latency_model is None:
                raise TargetError("a latency target needs this machine's latency model: a run calibrates it as it "
                                  "starts (latency.calibrate)")
            return LatencyTarget.for_model(latency_model, config, tuple(self.structures), self.target_speedup,
                                           self.target_latency)
        if self.fixed_masks is not None:
            return FixedStructure.from_file(Path(self.fixed_masks).expanduser(), config)
        if self.target_model is not None:
            t = self.target_model
            return ArchitectureTarget(t.n_layers, t.n_heads, t.intermediate_size)
        t = self.target_params
        if t.fraction is not None:
            return ParameterBudget.from_fraction(config, t.fraction, t.of, output_head_parameters)
        return ParameterBudget(int(t.count), t.of, output_head_parameters)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "None")


def _coerce(value: Any, annotation, key: str):
    """Checks (and mildly converts: int -> float, numeric strings from the command line) a value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors: list[ConfigError] = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected one of {[_type_name(o) for o in options]}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            names = [f.name for f in dataclasses.fields(annotation)]
            raise ConfigError(f"{key}: expected a mapping with keys {names}, got {value!r}")
        return build_dataclass(annotation, value, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.replace("_", "")):
            return int(value.replace("_", ""))
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    renamed = [f"{prefix}{key} is now {prefix}{RENAMED_KEYS[key]}" for key in unknown if key in RENAMED_KEYS]
    if renamed:
        raise ConfigError(f"renamed key{'s' if len(renamed) > 1 else ''}: {'; '.join(renamed)}")
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(prefix + n for n in names)}")
    try:
        return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})
    except TypeError as error:  # a required key is missing
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}".replace("__init__() ", "")) from None


def apply_override(data: dict, assignment: str) -> None:
    """`optimizer.lr=1e-4` -> data["optimizer"]["lr"] = 1e-4 (YAML-parsed value)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value, e.g. optimizer.lr=1e-4")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a mapping")
    value = yaml.safe_load(raw) if raw.strip() else None
    node[parts[-1]] = value
    # A target given on the command line replaces any other kind from the file.
    if parts[0] in TARGET_KEYS and value is not None:
        for other in TARGET_KEYS:
            if other != parts[0]:
                data.pop(other, None)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **values) -> RunConfig:
    """Reads a YAML file (optional), applies `key=value` overrides and keyword values, validates."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of keys, got {type(data).__name__}")
    for assignment in overrides or []:
        apply_override(data, assignment)
    data.update({key: value for key, value in values.items() if value is not None})
    return build_dataclass(RunConfig, data)


def config_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
