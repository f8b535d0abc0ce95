"""What the Configure page knows of a model before any weights load: its shape, from config.json.

The size panel must not wait for (or download) gigabytes of weights: a local directory's, the
bundled demo's or a hub model's cached config.json is enough to count every parameter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from prune_engine.modeling_prunable_encoder import PrunableEncoderConfig
from prune_engine.presets import bge_m3_config
from prune_engine.sources import (
    BGE_M3_HEAD_FILES,
    BGE_M3_HUB_ID,
    MINILM_ALIAS,
    ModelSourceError,
    encoder_config_from_hf,
    read_sentence_transformers_settings,
    resolve_model_dir,
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def is_hub_id(source: str) -> bool:
    return source != MINILM_ALIAS and bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def _head_parameters(files: list[Path]) -> int:
    import torch

    return sum(
        tensor.numel() for path in files for tensor in torch.load(path, map_location="cpu", weights_only=True).values()
    )


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


def model_shape(source: str) -> ModelShape:
    """A model's shape from its config.json alone, so the size panel never loads (or downloads) weights."""
    source = source.strip()
    if not is_hub_id(source):
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


def model_files(source: str) -> Path:
    """The folder holding a model's files: a local directory, the bundled demo's, or a hub model's
    snapshot in the local cache (never downloaded here: the page must not wait on the network)."""
    if not is_hub_id(source):
        return resolve_model_dir(source)
    config_file = _cached_hub_file(source, "config.json")
    if config_file is None:
        raise ModelSourceError(f"{source} is not in the local Hugging Face cache: its tokenizer loads when the run "
                               "starts")
    return config_file.parent


def serving_length(files: Path, shape: ModelShape, tokenizer) -> int:
    """Tokens per text the engine's `load_embedder` gives this model (so the run's `teacher.max_length`):
    the declared max_seq_length, else the tokenizer's limit, within the position embeddings."""
    declared = read_sentence_transformers_settings(files)[2]
    length = declared or min(getattr(tokenizer, "model_max_length", 512), 8192)
    config = shape.config
    offset = config.pad_token_id + 1 if config.position_ids_from_padding else 0
    return min(length, config.max_position_embeddings - offset)
