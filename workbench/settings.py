"""The Configure page's engine side: a run configuration from the page's choices, checked as a
YAML file would be, and the sizes it would give, computed before anything is trained."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from prune_engine.accounting import SizeReport, Structure, size_report
from prune_engine.config import (
    RunConfig,
    TargetParams,
    VocabConfig,
    apply_override,
    build_dataclass,
    load_config,
)
from prune_engine.data import KNOWN_DATASETS, load_training_data
from prune_engine.presets import ORIGINAL_PRESETS, bge_m3_config
from prune_engine.sources import MINILM_ALIAS, ModelSourceError, resolve_model_dir
from prune_engine.targets import SizeTarget

from .models import ModelShape, is_hub_id

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_minilm.yaml"


def default_config(model: str) -> RunConfig:
    """The Configure page's starting values: the demo config for the bundled MiniLM, the engine's
    defaults (half the encoder) otherwise; bf16 autocast where the GPU has it."""
    import torch

    if model == MINILM_ALIAS and DEMO_CONFIG.is_file():
        config = load_config(DEMO_CONFIG)
    else:
        config = RunConfig(model=model, target_params=TargetParams(fraction=0.5))
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


def describe_duration(config: RunConfig) -> str:
    count, unit = config.duration()
    return f"{count} {'steps' if unit == 'ba' else 'epochs'}"


def size_target(config: RunConfig, shape: ModelShape) -> SizeTarget:
    """The run's target for this model, checked against it (TargetError when it does not fit)."""
    target = config.size_target(shape.config, shape.output_head_parameters)
    target.validate(shape.config, tuple(config.structures))
    return target


def check_dataset(dataset: str) -> str:
    """Loads local and bundled data now, so a bad file is reported on the page rather than when the
    run starts; hub data sets (which may need a download) are checked when the run starts."""
    name = dataset.strip()
    if name != "demo" and (name in KNOWN_DATASETS or name.startswith("mteb/")):
        return f"{name}: loaded from the shared data folder or the hub when the run starts"
    data = load_training_data(name, "train")
    return f"{len(data):,} training examples ({data.kind.replace('_', ' ')}) from {data.source}"


def planned_size(config: RunConfig, shape: ModelShape, sequence_length: int,
                 vocab_size: int | None = None) -> tuple[SizeReport, bool]:
    """The size panel's report (against the untrimmed, unpruned model), and whether the structure
    is exact (a parameter budget's is spread evenly: the run decides where to cut)."""
    structure, exact = size_target(config, shape).planned_structure(shape.config)
    if vocab_size is not None:
        structure = dataclasses.replace(structure, vocab_size=vocab_size)
    return size_report(shape.config, structure, sequence_length, shape.output_head_parameters), exact


def vocabulary_plan(model: str, texts: list[str], trust_remote_code: bool = False):
    """The vocabulary a run with `vocab: {}` keeps: the tokens of its training texts (prune_engine.vocab)."""
    from transformers import AutoTokenizer

    from prune_engine.vocab import plan_for_run

    hub = is_hub_id(model)  # counted with the cached tokenizer only: the page must not wait on the network
    try:
        tokenizer = AutoTokenizer.from_pretrained(model if hub else resolve_model_dir(model), local_files_only=hub,
                                                  trust_remote_code=trust_remote_code)
    except OSError as error:
        where = "in the local Hugging Face cache" if hub else "loadable"
        raise ModelSourceError(f"{model}: its tokenizer, needed to count the vocabulary, is not {where} "
                               f"({str(error).splitlines()[0][:160]})") from None
    return plan_for_run(tokenizer, VocabConfig(), texts)


def preset_reports(sequence_length: int) -> list[tuple[str, dict, SizeReport]]:
    """The original design's three BGE-M3 presets with their true sizes."""
    config = bge_m3_config()
    reports = []
    for name, preset in ORIGINAL_PRESETS.items():
        structure = Structure.uniform(preset["n_layers"], preset["n_heads"], preset["intermediate_size"], config.vocab_size)
        reports.append((name, preset, size_report(config, structure, sequence_length)))
    return reports
