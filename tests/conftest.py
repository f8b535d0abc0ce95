"""Shared fixtures: the real MiniLM, the real XLM-R tokenizer, tiny random encoders, real sentences.

The evaluation data lives beside the project root as `../shared/data/` (PRUNE_ENGINE_DATA
overrides). It is never skipped: a missing folder fails with a message saying where it belongs.
"""

from __future__ import annotations

import csv
import os
import random

# Tests never reach the network: the hub fails fast instead of retrying (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
from pathlib import Path

import pytest
import torch
from torch import nn

from prune_engine.config import load_config
from prune_engine.data import RetrievalTask
from prune_engine.embedder import Embedder
from prune_engine.l0 import StructureMasks
from prune_engine.modeling_prunable_encoder import PrunableEncoderModel
from prune_engine.sources import bundled_minilm_dir, encoder_config_from_hf, load_embedder

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PRUNE_ENGINE_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def isolated_encoding_cache(tmp_path_factory):
    """The eval command's encoding cache in a fresh folder, never the user's ~/.cache."""
    from prune_engine.encoding_cache import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("prune_engine_cache"))
    yield


def pytest_configure(config):
    # torch warns when nn.Linear initialises a layer with no head or no neuron: expected here.
    config.addinivalue_line("filterwarnings", "ignore:Initializing zero-element tensors is a no-op:UserWarning")


def require_data(relative: str = "") -> Path:
    path = DATA_DIR / relative
    assert path.exists(), (
        f"shared evaluation data missing: expected {path} (the folder `shared/data` beside the project root; "
        "set PRUNE_ENGINE_DATA to point elsewhere)"
    )
    return path


def retrieval_subset(task: RetrievalTask, n_queries: int, n_documents: int, seed: int = 0) -> RetrievalTask:
    """A smaller task for quick checks: `n_queries` judged queries, all their relevant documents,
    and random other documents up to `n_documents` (figures are not comparable with the full task's)."""
    rng = random.Random(seed)
    query_ids = sorted(rng.sample(sorted(task.qrels), min(n_queries, len(task.qrels))))
    relevant = dict.fromkeys(doc for q in query_ids for doc in task.qrels[q] if doc in task.corpus)
    others = [doc for doc in task.corpus if doc not in relevant]
    doc_ids = list(relevant) + rng.sample(others, max(0, min(n_documents - len(relevant), len(others))))
    return RetrievalTask(
        queries={q: task.queries[q] for q in query_ids},
        corpus={doc: task.corpus[doc] for doc in sorted(doc_ids)},
        qrels={q: task.qrels[q] for q in query_ids},
        source=f"{task.source}, {len(query_ids)} queries over {len(doc_ids)} documents",
    )


def randomize_parameters(module: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Every weight and bias random (HF's init leaves biases 0 and LayerNorms 1, which would hide
    bugs in bias / LayerNorm handling)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if name.endswith("LayerNorm.weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            else:
                parameter.copy_(scale * noise)
    return module


def tiny_hf_config(kind: str, **overrides):
    """A tiny stock config: kind in 'bert', 'roberta', 'xlm-roberta'."""
    from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

    common = dict(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=40,
    )
    if kind == "bert":
        cls, extra = BertConfig, {}
    else:
        cls = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[kind]
        extra = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
    return cls(**{**common, **extra, **overrides})


def random_uneven_masks(config, seed: int, drop_layer: int | None = 1, empty_heads_layer: int | None = None) -> StructureMasks:
    """Different head counts and FFN widths per layer, optionally one layer dropped and one layer
    keeping no head at all."""
    generator = torch.Generator().manual_seed(seed)
    n_layers = config.num_hidden_layers
    layers = torch.ones(n_layers, dtype=torch.bool)
    if drop_layer is not None:
        layers[drop_layer] = False
    heads, ffn = [], []
    for index, (n_heads, n_neurons) in enumerate(zip(config.heads_per_layer, config.intermediate_sizes, strict=True)):
        keep_heads = 0 if index == empty_heads_layer else 1 + (index % n_heads)
        head_mask = torch.zeros(n_heads, dtype=torch.bool)
        head_mask[torch.randperm(n_heads, generator=generator)[:keep_heads]] = True
        fraction = (0.3, 0.6, 0.85)[index % 3]
        neuron_mask = torch.zeros(n_neurons, dtype=torch.bool)
        neuron_mask[torch.randperm(n_neurons, generator=generator)[: max(1, int(fraction * n_neurons))]] = True
        heads.append(head_mask)
        ffn.append(neuron_mask)
    return StructureMasks(layers=layers, heads=heads, ffn=ffn)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return require_data()


@pytest.fixture(scope="session")
def real_sentences(shared_data_dir) -> list[str]:
    """Eight real STS-B sentences of varied length (so a batch has padding)."""
    with (shared_data_dir / "stsb" / "stsb-en-dev.tsv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [row["sentence1"] for row in rows[:4]] + [row["sentence2"] for row in rows[4:8]]
    assert len({len(s.split()) for s in sentences}) > 1, "need sentences of different lengths for padding"
    return sentences


@pytest.fixture(scope="session")
def multilingual_sentences(shared_data_dir) -> list[str]:
    sentences = []
    for language in ("en", "de", "fr", "zh"):
        with (require_data(f"stsb/stsb-{language}-dev.tsv")).open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        sentences += [rows[1]["sentence1"], rows[7]["sentence2"]]
    return sentences


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 (bundled pip package). Tests must not modify it."""
    return load_embedder("minilm").eval()


@pytest.fixture(scope="session")
def xlmr_tokenizer(shared_data_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require_data("xlmr-tokenizer"))


@pytest.fixture(scope="session")
def tiny_xlmr_embedder(xlmr_tokenizer):
    """Factory: a random tiny XLM-R with the real 250,002-piece vocabulary, CLS pooling and
    BGE-M3-style sparse / ColBERT heads."""

    def make(seed: int = 0, num_hidden_layers: int = 3, intermediate_size: int = 48, with_heads: bool = True) -> Embedder:
        from transformers import XLMRobertaConfig

        hf_config = XLMRobertaConfig(
            vocab_size=250002,
            hidden_size=32,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=4,
            intermediate_size=intermediate_size,
            max_position_embeddings=66,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        torch.manual_seed(seed)
        encoder = randomize_parameters(PrunableEncoderModel(encoder_config_from_hf(hf_config.to_dict())), seed)
        heads = {}
        if with_heads:
            heads = dict(sparse_linear=nn.Linear(32, 1), colbert_linear=nn.Linear(32, 32))
            for offset, head in enumerate(heads.values()):
                randomize_parameters(head, seed + 100 + offset, scale=0.3)
        embedder = Embedder(
            encoder, xlmr_tokenizer, pooling="cls", normalize=True, max_length=64, source="tiny-xlmr", **heads
        )
        return embedder.eval()

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 3-layer BERT (hidden 32) saved as a stock checkpoint with MiniLM's tokenizer: runs
    on it take about a second."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(bundled_minilm_dir()).save_pretrained(directory)
    return directory


def tiny_config(model_dir: Path, run_dir: Path, *overrides: str):
    """An 8-step run on the demo pairs: 4 steps learning masks, 4 fine-tuning, a checkpoint every 4."""
    return load_config(None, [
        f"model={model_dir}", "dataset=demo", f"output_dir={run_dir}", "target_params.fraction=0.5",
        "batch_size=8", "max_length=32", "max_duration=8ba", "mask_fraction=0.5", "log_every=1",
        "checkpoint_every=4", "optimizer.lr=1e-3", *overrides,
    ])
