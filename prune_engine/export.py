"""Writes a pruned embedder as a Hugging Face + sentence-transformers directory.

A structure a stock config can express (layers dropped, all heads kept, one FFN width) is written
as a plain BERT / RoBERTa / XLM-R config that needs no remote code, with the source's pooler
weights so a stock model class finds every weight it has. Anything else ships the prunable
encoder's modeling file, and its config keeps the source's stock `model_type` with an `auto_map`
for AutoModel only: the model loads with `trust_remote_code=True`, while the config and the
tokenizer load with stock classes, running no code and asking nothing (transformers asks "Do you
wish to run the custom code?" for a config whose model_type it does not know). A tokenizer of
the source's own code is shipped with that code; a stock one is written plain.

The directory is built beside its destination in a staging folder and renamed into place
(`atomic.py`), so an interrupted export leaves nothing half-written. An existing directory is
replaced only when asked, and only if it is an export this tool wrote (it holds
pruning_info.json): never a workspace, a run directory or any other folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import modeling_prunable_encoder
from .accounting import Structure, count_parameters
from .atomic import remove_stale_partials, staging_folder
from .embedder import Embedder
from .sources import BGE_M3_HEAD_FILES, STOCK_CONFIG_KEYS

STOCK_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
_MODELING_FILE = Path(modeling_prunable_encoder.__file__)
_MODEL_CLASS = modeling_prunable_encoder.PrunableEncoderModel.__name__
# A trimmed vocabulary's map back to the source's ids: entry i is the source id of token i. BGE-M3's
# lexical weights are keyed by token id, so they match an index the source built only through it.
ORIGINAL_IDS_FILE = "original_token_ids.json"
PARAMETERS_COUNTED = (
    "parameters_before / parameters_after count the embeddings, the encoder and BGE-M3's output heads; "
    "pooler_parameters counts the pooler shipped beside them (what a stock model class loads, never used "
    "for sentence embeddings)"
)


class ExportError(ValueError):
    """An export that cannot be written; nothing was changed on disk."""


def needs_remote_code(config) -> bool:
    uniform_ffn = len(set(config.intermediate_sizes)) <= 1 and config.intermediate_size > 0
    all_heads = all(h == config.num_attention_heads for h in config.heads_per_layer)
    full_width = config.num_attention_heads * config.attention_head_size == config.hidden_size
    return not (config.source_model_type in STOCK_MODEL_TYPES and uniform_ffn and all_heads and full_width)


def _stock_config_dict(config) -> dict:
    from transformers import AutoConfig

    fields = {k: getattr(config, k) for k in STOCK_CONFIG_KEYS if getattr(config, k, None) is not None}
    stock = AutoConfig.for_model(config.source_model_type, **fields)
    stock.architectures = [{"bert": "BertModel", "roberta": "RobertaModel"}.get(config.source_model_type, "XLMRobertaModel")]
    return stock.to_dict()


def _remote_code_config_dict(config) -> dict:
    """The per-layer config under the source's stock model_type, with remote code for AutoModel only:
    an unknown model_type with an AutoConfig entry would make every AutoConfig / AutoTokenizer load
    ask to run code, and the shipped config class warn about the model type it reads."""
    data = config.to_dict()
    data["model_type"] = config.source_model_type
    data["auto_map"] = {"AutoModel": f"{_MODELING_FILE.stem}.{_MODEL_CLASS}"}
    data["architectures"] = [_MODEL_CLASS]
    return data


def _shipped_pooler(embedder: Embedder) -> dict[str, torch.Tensor]:
    """The pooler goes with a stock config (its model class has one); the prunable encoder has none."""
    if embedder.pooler is None or needs_remote_code(embedder.config):
        return {}
    return embedder.pooler


def _save_tokenizer(tokenizer, directory: Path) -> bool:
    """Writes the tokenizer; True when loading it runs code of its own, shipped beside it.

    A stock class that a model's auto_map named (transformers then registers it as custom code,
    process-wide) is written as the plain tokenizer it is: no auto_map, no code copied.
    """
    custom = not type(tokenizer).__module__.startswith("transformers.")
    written = copy.copy(tokenizer)
    # With _auto_class set, transformers copies the class's module beside the files and maps AutoTokenizer to it.
    written._auto_class = "AutoTokenizer" if custom else None
    written.save_pretrained(directory)
    if not custom:  # the auto_map read with it would name code that is not there
        settings = directory / "tokenizer_config.json"
        data = json.loads(settings.read_text())
        if data.pop("auto_map", None) is not None:
            settings.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return custom


def _write_sentence_transformers_files(embedder: Embedder, directory: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if embedder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir()
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": embedder.max_length, "do_lower_case": False}, indent=2)
    )
    pooling = {
        "word_embedding_dimension": embedder.config.hidden_size,
        "pooling_mode_cls_token": embedder.pooling == "cls",
        "pooling_mode_mean_tokens": embedder.pooling == "mean",
        "pooling_mode_max_tokens": embedder.pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": embedder.pooling == "mean_sqrt_len_tokens",
    }
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}, indent=2))


def _vocabulary_note(vocabulary: dict | None) -> str:
    """Users must know a trimmed model reads only what its vocabulary covers."""
    if not vocabulary:
        return ""
    return (
        f"Vocabulary trimmed to {vocabulary['vocab_size_after']:,} of {vocabulary['vocab_size_before']:,} tokens: "
        "text it covers embeds exactly as before; other text is spelt with the kept pieces or the unknown token. "
        f"`{ORIGINAL_IDS_FILE}` lists the source's id of each token (entry i: token i); key lexical weights by "
        "those ids to match an index the source model built.\n"
    )


def _model_card(info: dict, remote_code: bool) -> str:
    flag = ", trust_remote_code=True" if remote_code else ""
    after = info["parameters_after"]
    before = info["parameters_before"]
    return f"""# Pruned from {info['source_model']}

Structure kept: {info['structure_description']}.
Parameters: {after['total']:,} (was {before['total']:,}; encoder {after['encoder']:,}, was {before['encoder']:,}).
{_vocabulary_note(info.get("vocabulary"))}
```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("path/to/this/directory"{flag})
embeddings = model.encode(["A sentence to embed."])
```

`pruning_info.json` lists every kept layer, head and FFN width, and the sizes before and after.
"""


def pruning_info(
    embedder: Embedder,
    source_model: str,
    source_config,
    kept_layers: list[dict] | None = None,
    extra: dict | None = None,
    vocabulary: dict | None = None,
) -> dict:
    """What an export records about where it came from and what it kept; `vocabulary` is a trimmed
    vocabulary's `VocabularyPlan.summary()` (None: the original vocabulary)."""
    heads = embedder.output_head_parameters()
    structure = Structure.of(embedder.config)
    return {
        "source_model": source_model,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "structure_description": structure.describe(),
        "heads_per_layer": list(structure.heads_per_layer),
        "intermediate_sizes": list(structure.intermediate_sizes),
        "kept_layers": kept_layers,
        "parameters_before": count_parameters(source_config, None, heads).as_dict(),
        "parameters_after": count_parameters(embedder.config, structure, heads).as_dict(),
        "pooler_parameters": sum(t.numel() for t in _shipped_pooler(embedder).values()),
        "parameters_counted": PARAMETERS_COUNTED,
        "vocabulary": vocabulary,
        **(extra or {}),
    }


def check_destination(destination: Path, overwrite: bool) -> None:
    """Refuses, before anything is written, a destination that must not be replaced."""
    if not destination.exists():
        return
    if not overwrite:
        raise ExportError(f"{destination} already exists: choose another directory or allow replacing it")
    if not destination.is_dir():
        raise ExportError(f"{destination} exists and is not a directory: choose another destination")
    if not (destination / "pruning_info.json").is_file():
        raise ExportError(
            f"{destination} is not an export this tool wrote (it has no pruning_info.json), so it is never replaced: "
            "choose another directory; nothing was changed"
        )


def _write_files(embedder: Embedder, staging: Path, info: dict, original_ids: Sequence[int] | None) -> None:
    config = embedder.config
    remote_code = needs_remote_code(config)
    config_dict = _remote_code_config_dict(config) if remote_code else _stock_config_dict(config)
    (staging / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    if remote_code:
        shutil.copyfile(_MODELING_FILE, staging / _MODELING_FILE.name)
    state = {**embedder.encoder.state_dict(), **_shipped_pooler(embedder)}
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
    # safetensors creates its file private (0600); give it the mode every other file here has.
    os.chmod(staging / "model.safetensors", (staging / "config.json").stat().st_mode & 0o777)
    remote_code = _save_tokenizer(embedder.tokenizer, staging) or remote_code
    _write_sentence_transformers_files(embedder, staging)
    for name, filename in BGE_M3_HEAD_FILES.items():
        head = getattr(embedder, name)
        if head is not None:
            torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, staging / filename)
    if original_ids is not None:
        (staging / ORIGINAL_IDS_FILE).write_text(json.dumps([int(i) for i in original_ids]))
    info = {**info, "needs_trust_remote_code": remote_code}
    (staging / "pruning_info.json").write_text(json.dumps(info, indent=2))
    (staging / "README.md").write_text(_model_card(info, remote_code))


def export_embedder(embedder: Embedder, destination: str | Path, info: dict, overwrite: bool = False,
                    original_ids: Sequence[int] | None = None) -> Path:
    """Writes the directory and returns its path. `info` becomes pruning_info.json; `original_ids`,
    for a trimmed vocabulary, the source id of each token (`VocabularyPlan.kept_ids`)."""
    if original_ids is not None and len(original_ids) != embedder.config.vocab_size:
        raise ExportError(f"original_ids has {len(original_ids):,} entries for a vocabulary of "
                          f"{embedder.config.vocab_size:,}: pass the plan the model was trimmed with")
    destination = Path(destination).expanduser().resolve()
    check_destination(destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination.parent, destination.name)
    staging = staging_folder(destination)
    try:
        staging.mkdir()
        _write_files(embedder, staging, info, original_ids)
        if destination.exists():
            replaced = staging_folder(destination)  # removed below, or as stale by the next export here
            destination.rename(replaced)
            try:
                staging.rename(destination)
            except OSError:
                replaced.rename(destination)  # the previous export goes back in place
                raise
            shutil.rmtree(replaced)
        else:
            staging.rename(destination)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"could not write the export {destination}: {error.strerror or error}. Free disk space or "
                          "choose a writable destination; nothing was changed") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
