"""The Configure page's engine side: the run configuration the page edits (changed one field at a
time with `dataclasses.replace`, so every change is validated as the config itself validates it),
the page's `key=value` lines on top of it, the documents and data checks, and the sizes it would
give, computed before anything is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prune_engine.accounting import SizeReport, Structure, size_report
from prune_engine.config import (
    TARGET_KEYS,
    RunConfig,
    TargetModel,
    TargetParams,
    VocabConfig,
    apply_override,
    build_dataclass,
    load_config,
)
from prune_engine.data import KNOWN_DATASETS, load_training_data
from prune_engine.documents import DocumentSplit, LengthChoice, choose_length
from prune_engine.latency import LatencyModel
from prune_engine.presets import ORIGINAL_PRESETS, bge_m3_config
from prune_engine.run_inputs import calibrate_here
from prune_engine.sources import MINILM_ALIAS, ModelSourceError
from prune_engine.targets import SizeTarget

from .models import ModelShape, model_files, serving_length

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_minilm.yaml"
# The task data choices: what `dataset` becomes when one is picked ("" = a file not named yet).
DATA_KINDS = {"none": None, "demo": "demo", "sts": "sts", "msmarco": "msmarco", "mteb": "mteb/scifact", "path": ""}
MTEB_TASKS = tuple(name for name in KNOWN_DATASETS if name.startswith("mteb/"))
# Said once on the Configure page while no documents are given.
NO_DOCUMENTS = (
    "No documents: retrieval on your own data is neither protected nor measured. The model is distilled on the "
    "task data alone, and every figure at the end covers only that data. Give the texts your model will serve "
    "above: a file or BEIR folder, no labels needed."
)
STRUCTURE_OF_TARGET = {"n_layers": "layers", "n_heads": "heads", "intermediate_size": "ffn"}
TARGET_KINDS = ("architecture", "budget", "speedup", "latency")
DEFAULT_TARGET_SPEEDUP = 2.0
DEFAULT_TARGET_LATENCY_S = 0.1  # before this machine is calibrated: a starting value to edit
# A quick calibration for the Configure page's prediction; the run calibrates again with its full
# time budget as it starts (latency.TIME_BUDGET_S).
PAGE_CALIBRATION_ROUNDS = 3


def default_config(model: str) -> RunConfig:
    """The Configure page's starting values: the demo config for the bundled MiniLM, the engine's
    defaults (half the encoder) otherwise; bf16 autocast where the GPU has it. The documents start
    empty: the page's first question is which texts the user serves (the demo's own sentences
    stand in for them only in the CLI demo)."""
    import torch

    if model == MINILM_ALIAS and DEMO_CONFIG.is_file():
        config = dataclasses.replace(load_config(DEMO_CONFIG), documents=None)
    else:
        config = RunConfig(model=model, target_params=TargetParams(fraction=0.5))
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        config = dataclasses.replace(config, precision="amp_bf16")
    return config


# --------------------------------------------------------------------------- editing one field


def read_field(config, path: str):
    """`optimizer.lr` -> config.optimizer.lr."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def replaced(config, path: str, value):
    """A copy with the field at `path` set to `value`; RunConfig validates the result (ConfigError)."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(config, **{head: replaced(getattr(config, head), rest, value) if rest else value})


def with_architecture(config: RunConfig, name: str, value: int, shape: ModelShape) -> RunConfig:
    """One dimension of a uniform target; cutting it below the model's adds the structure that
    must be pruned for it (fewer layers than the model has: layers are pruned). A slider's change
    that arrives after the target became a budget (the browser sends it late) changes nothing."""
    if config.target_model is None:
        return config
    full = {"n_layers": shape.config.num_hidden_layers, "n_heads": max(shape.config.heads_per_layer),
            "intermediate_size": max(shape.config.intermediate_sizes)}
    structures = list(config.structures)
    if value < full[name] and STRUCTURE_OF_TARGET[name] not in structures:
        structures.append(STRUCTURE_OF_TARGET[name])
    return dataclasses.replace(config, target_model=dataclasses.replace(config.target_model, **{name: value}),
                               structures=structures)


def ffn_step(shape: ModelShape) -> int:
    return max(1, max(shape.config.intermediate_sizes) // 32)


def target_kind(config: RunConfig) -> str:
    """Which of TARGET_KINDS the config's target is (a fixed structure comes from the settings lines)."""
    if config.target_speedup is not None:
        return "speedup"
    if config.target_latency is not None:
        return "latency"
    return "budget" if config.target_params is not None else "architecture"


def with_target_kind(config: RunConfig, kind: str, shape: ModelShape,
                     latency_model: LatencyModel | None = None) -> RunConfig:
    """`architecture`: every layer, three quarters of the heads and FFN neurons (the structures a
    uniform architecture prunes); `budget`: half of the encoder's parameters; `speedup`: twice as
    fast on this machine; `latency`: half the unpruned model's time per batch where this machine is
    calibrated (`latency_model`), else DEFAULT_TARGET_LATENCY_S."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; choose one of {TARGET_KINDS}")
    target: dict = dict.fromkeys(TARGET_KEYS)
    structures = config.structures
    if kind == "budget":
        target["target_params"] = TargetParams(fraction=0.5)
    elif kind == "speedup":
        target["target_speedup"] = DEFAULT_TARGET_SPEEDUP
    elif kind == "latency":
        seconds = latency_model.full_latency / 2 if latency_model is not None else DEFAULT_TARGET_LATENCY_S
        target["target_latency"] = float(f"{seconds:.3g}")
    else:
        model, step = shape.config, ffn_step(shape)
        target["target_model"] = TargetModel(model.num_hidden_layers, max(1, max(model.heads_per_layer) * 3 // 4),
                                             max(model.intermediate_sizes) * 3 // 4 // step * step)
        structures = list(dict.fromkeys([*config.structures, "heads", "ffn"]))
    return dataclasses.replace(config, **target, structures=structures)


def typed_source(text: str) -> str:
    """A path field's text: an existing path absolute (`~` expanded), so the run's config.yaml names
    the same file wherever it is read; anything else as typed (a data set name, or "")."""
    text = text.strip()
    path = Path(text).expanduser()
    return str(path.resolve()) if text and path.exists() else text


def with_documents(config: RunConfig, text: str) -> RunConfig:
    return dataclasses.replace(config, documents=typed_source(text) or None)


def data_kind(dataset: str | None) -> str:
    """Which of DATA_KINDS a dataset belongs to."""
    if dataset is None:
        return "none"
    if dataset in ("demo", "msmarco"):
        return dataset
    if dataset == "sts" or dataset.startswith("sts-"):
        return "sts"
    return "mteb" if dataset.startswith("mteb/") else "path"


def with_task_file(config: RunConfig, text: str) -> RunConfig:
    return dataclasses.replace(config, dataset=typed_source(text))


def run_config(draft: RunConfig, overrides: str = "") -> RunConfig:
    """The page's config plus any `key=value` lines, validated exactly as a YAML file would be (a
    target in the lines replaces the page's)."""
    data = draft.to_dict()
    for line in overrides.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            apply_override(data, line.strip())
    return build_dataclass(RunConfig, data)


def changed_keys(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs' dicts."""
    keys = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            keys.append(prefix + key)
    return keys


# --------------------------------------------------------------------------- describing and checking


def describe_duration(config: RunConfig) -> str:
    count, unit = config.duration()
    return f"{count} {'steps' if unit == 'ba' else 'epochs'}"


def document_names(documents: str | list[str]) -> str:
    """The documents' file (or data set) names, for short labels."""
    return ", ".join(Path(source).name or source for source in ([documents] if isinstance(documents, str) else documents))


def describe_data(config: RunConfig) -> str:
    if config.documents is None:
        return f"{config.dataset} (no documents)"
    documents = f"documents {document_names(config.documents)}"
    return f"{documents} and task data {config.dataset}" if config.dataset else documents


def document_sources(documents: str | list[str]) -> tuple[str, ...]:
    return (documents,) if isinstance(documents, str) else tuple(documents)


def modified_times(sources: tuple[str, ...]) -> tuple[float, ...]:
    """Each source's last change (a BEIR folder's: its corpus.jsonl), so a cache sees an edited file."""
    times = []
    for source in sources:
        path = Path(source).expanduser()
        path = path / "corpus.jsonl" if path.is_dir() else path
        times.append(path.stat().st_mtime if path.exists() else 0.0)
    return tuple(times)


def size_target(config: RunConfig, shape: ModelShape, latency_model: LatencyModel | None = None) -> SizeTarget:
    """The run's target for this model, checked against it (TargetError when it does not fit; a
    latency target needs this machine's `latency_model`)."""
    target = config.size_target(shape.config, shape.output_head_parameters, latency_model)
    target.validate(shape.config, tuple(config.structures))
    return target


def calibrate_latency(shape: ModelShape, batch_size: int, length: int) -> LatencyModel:
    """This machine's latency model for the model, as a run calibrates it, in fewer rounds."""
    return calibrate_here(shape.config, batch_size, length, repeats=PAGE_CALIBRATION_ROUNDS)


def check_dataset(dataset: str) -> str:
    """Loads local and bundled data now, so a bad file is reported on the page rather than when the
    run starts; hub data sets (which may need a download) are checked when the run starts."""
    name = dataset.strip()
    if name != "demo" and (name in KNOWN_DATASETS or name.startswith("mteb/")):
        return f"{name}: loaded from the shared data folder or the hub when the run starts"
    data = load_training_data(name, "train")
    return f"{len(data):,} training examples ({data.kind.replace('_', ' ')}) from {data.source}"


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The model's tokenizer from its local files (a hub model's from the cache only)."""
    from transformers import AutoTokenizer

    files = model_files(model)
    try:
        return AutoTokenizer.from_pretrained(files, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelSourceError(f"{model}: its tokenizer could not be loaded from {files} "
                               f"({str(error).splitlines()[0][:160]})") from None


def documents_length(tokenizer, shape: ModelShape, split: DocumentSplit) -> LengthChoice:
    """The training length a run with `max_length: null` reads these documents at (as run_inputs
    chooses it: from the training documents, within the model's serving length)."""
    limit = serving_length(model_files(shape.source), shape, tokenizer)
    return choose_length(tokenizer, split.training.texts(), limit)


def vocabulary_texts(dataset: str | None, documents: DocumentSplit | None) -> list[str]:
    """What a trimmed vocabulary is counted on, as a run counts it: the task data's training texts
    and the training documents, never the held-out ones."""
    texts = load_training_data(dataset, "train").distinct_texts() if dataset else []
    return list(dict.fromkeys(texts + (documents.training.texts() if documents else [])))


def vocabulary_plan(tokenizer, texts: list[str]):
    """The vocabulary a run with `vocab: {}` keeps: the tokens of its training texts (prune_engine.vocab)."""
    from prune_engine.vocab import plan_for_run

    return plan_for_run(tokenizer, VocabConfig(), texts)


def planned_size(config: RunConfig, shape: ModelShape, sequence_length: int, vocab_size: int | None = None,
                 latency_model: LatencyModel | None = None) -> tuple[SizeReport, bool]:
    """The size panel's report (against the untrimmed, unpruned model), and whether the structure
    is exact (a parameter or latency budget's is spread evenly: the run decides where to cut)."""
    structure, exact = size_target(config, shape, latency_model).planned_structure(shape.config)
    if vocab_size is not None:
        structure = dataclasses.replace(structure, vocab_size=vocab_size)
    return size_report(shape.config, structure, sequence_length, shape.output_head_parameters), exact


def preset_reports(sequence_length: int) -> list[tuple[str, dict, SizeReport]]:
    """The original design's three BGE-M3 presets with their true sizes."""
    config = bge_m3_config()
    reports = []
    for name, preset in ORIGINAL_PRESETS.items():
        structure = Structure.uniform(preset["n_layers"], preset["n_heads"], preset["intermediate_size"], config.vocab_size)
        reports.append((name, preset, size_report(config, structure, sequence_length)))
    return reports
