"""Vocabulary trimming: keep the tokens a corpus uses and only their rows of the embedding matrix.

BGE-M3's word embeddings are 256M of its 567M parameters and layer, head or FFN pruning cannot
touch them; a deployment that reads a few languages uses a small share of the 250,002 pieces.

A trimmed tokenizer segments every text the kept vocabulary covers exactly as the original does,
so those texts embed exactly as before:
- WordPiece matches the longest piece of a word greedily; the pieces the original chose are kept
  and every longer candidate was absent already, so each step chooses the same piece. A word the
  kept pieces cannot spell becomes the unknown token.
- Unigram (sentencepiece, XLM-R) picks the best-scoring path through a lattice of pieces. Dropping
  pieces removes paths but not the best one of a covered text. Where no one-character piece is
  left, the lattice gets an unknown-token node scored `lowest piece score - 10`, so the lowest-
  scoring piece is kept: that penalty stays the original's, and such paths stay worse than the
  original best path. Uncovered text is spelt with the kept pieces, characters none of them
  spells become the unknown token; with byte fallback all byte pieces are kept instead.

Kept ids keep their original order, so the special tokens at the start (`<s> <pad> </s> <unk>`,
`[PAD]`) keep their ids and RoBERTa-style position ids, counted from the padding id, are unchanged.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .accounting import SizeReport, Structure, size_report
from .config import VocabConfig
from .data import load_texts
from .embedder import Embedder
from .prune import encoder_with_weights

TRIMMABLE_MODELS = ("Unigram", "WordPiece")
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
_SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


@dataclass(frozen=True, eq=False)
class VocabularyPlan:
    """Which original token ids a trimmed model keeps; the new id of `kept_ids[i]` is `i`."""

    kept_ids: np.ndarray  # original ids, ascending
    counts: np.ndarray  # corpus count of each kept id (0 for those kept though the corpus never uses them)
    original_vocab_size: int
    corpus_tokens: int  # token occurrences in the corpus
    coverage: float  # share of those occurrences whose token is kept
    min_freq: int
    top_n: int | None
    keep_first: int

    @property
    def vocab_size(self) -> int:
        return len(self.kept_ids)

    @cached_property
    def new_ids(self) -> np.ndarray:
        """Original id -> new id, -1 where the token is dropped."""
        mapping = np.full(self.original_vocab_size, -1, dtype=np.int64)
        mapping[self.kept_ids] = np.arange(self.vocab_size)
        return mapping

    def new_id(self, original_id: int) -> int:
        new = int(self.new_ids[original_id])
        if new < 0:
            raise ValueError(f"token id {original_id} is needed by the tokenizer but the plan drops it")
        return new

    def to_original_ids(self, lexical_weights: dict[int, float]) -> dict[int, float]:
        """BGE-M3 lexical weights keyed by the original ids, to match against an untrimmed model's index."""
        return {int(self.kept_ids[token]): weight for token, weight in lexical_weights.items()}

    def summary(self) -> dict:
        """What an export records: `export.pruning_info(..., vocabulary=plan.summary())`."""
        return {
            "vocab_size_before": self.original_vocab_size,
            "vocab_size_after": self.vocab_size,
            "corpus_tokens": self.corpus_tokens,
            "corpus_coverage": self.coverage,
            "min_freq": self.min_freq,
            "top_n": self.top_n,
            "keep_first": self.keep_first,
        }


@dataclass(frozen=True)
class Coverage:
    """How much of a text sample the kept vocabulary covers."""

    tokens: float  # share of the original tokenizer's tokens that are kept
    texts: float  # share of texts all of whose tokens are kept: these embed exactly as before


def _backend_json(tokenizer) -> dict:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data["model"]["type"] not in TRIMMABLE_MODELS:
        raise ValueError(
            f"cannot trim a {data['model']['type']} tokenizer's vocabulary; supported: {', '.join(TRIMMABLE_MODELS)}"
        )
    return data


@contextmanager
def _untruncated_unpadded(backend: Tokenizer) -> Iterator[Tokenizer]:
    """The backend with truncation and padding off, restored afterwards (the caller's tokenizer keeps its settings)."""
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        yield backend
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The ids a tokenizer gives each whole text, without special tokens."""
    with _untruncated_unpadded(tokenizer.backend_tokenizer) as backend:
        return [encoding.ids for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=False)]


def _structural_ids(tokenizer, tokenizer_json: dict) -> set[int]:
    """Ids a trimmed tokenizer needs whatever the corpus: special and added tokens; for Unigram the
    lowest-scoring piece (it sets the unknown-token penalty) and, with byte fallback, the byte pieces."""
    ids = set(tokenizer.all_special_ids) | {token["id"] for token in tokenizer_json["added_tokens"]}
    model = tokenizer_json["model"]
    if model["type"] == "Unigram":
        ids.add(int(np.argmin([score for _, score in model["vocab"]])))
        if model.get("byte_fallback"):
            ids |= {i for i, (piece, _) in enumerate(model["vocab"]) if _BYTE_PIECE.fullmatch(piece)}
    return ids


def plan_vocabulary(
    tokenizer, texts: Sequence[str], min_freq: int = 1, top_n: int | None = None, keep_first: int = 0
) -> VocabularyPlan:
    """Keeps the tokens `texts` use at least `min_freq` times (only the `top_n` most frequent, if
    given), every token the tokenizer itself needs, and the first `keep_first` ids: WordPiece (BERT)
    and sentencepiece vocabularies list pieces from most to least frequent in the tokenizer's own
    training text, so these spell common words the corpus happens to lack."""
    if min_freq < 1:
        raise ValueError(f"min_freq must be at least 1, got {min_freq}")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1 or None, got {top_n}")
    if keep_first < 0:
        raise ValueError(f"keep_first must be 0 or more, got {keep_first}")
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    ids = token_ids(tokenizer, texts)
    counts = np.bincount(np.fromiter((i for row in ids for i in row), dtype=np.int64), minlength=size)
    if counts.sum() == 0:
        raise ValueError("the corpus gives no tokens to count: give it some text")
    structural = np.fromiter(_structural_ids(tokenizer, _backend_json(tokenizer)), dtype=np.int64)
    chosen = np.setdiff1d(np.flatnonzero(counts >= min_freq), structural)
    if top_n is not None:
        chosen = chosen[np.argsort(-counts[chosen], kind="stable")[:top_n]]
    kept = np.union1d(np.union1d(chosen, structural), np.arange(min(keep_first, size)))
    return VocabularyPlan(
        kept_ids=kept,
        counts=counts[kept],
        original_vocab_size=size,
        corpus_tokens=int(counts.sum()),
        coverage=float(counts[kept].sum() / counts.sum()),
        min_freq=min_freq,
        top_n=top_n,
        keep_first=keep_first,
    )


def _kept_mask(tokenizer, plan: VocabularyPlan, texts: Sequence[str]) -> list[np.ndarray]:
    """Per text, whether each of its original tokens is kept."""
    return [plan.new_ids[np.asarray(row, dtype=np.int64)] >= 0 for row in token_ids(tokenizer, texts)]


def coverage(tokenizer, plan: VocabularyPlan, texts: Sequence[str]) -> Coverage:
    """How much of `texts` (e.g. a held-out sample) the plan covers, counted with the untrimmed `tokenizer`."""
    masks = _kept_mask(tokenizer, plan, texts)
    total = sum(len(mask) for mask in masks)
    kept = sum(int(mask.sum()) for mask in masks)
    return Coverage(tokens=kept / max(total, 1), texts=sum(bool(mask.all()) for mask in masks) / max(len(masks), 1))


def covered_texts(tokenizer, plan: VocabularyPlan, texts: Sequence[str]) -> list[str]:
    """The texts every token of which the plan keeps: a trimmed model embeds them exactly as before."""
    return [text for text, mask in zip(texts, _kept_mask(tokenizer, plan, texts), strict=True) if mask.all()]


def _remap_post_processor(processor: dict, plan: VocabularyPlan) -> None:
    kind = processor["type"]
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [plan.new_id(i) for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key][1] = plan.new_id(processor[key][1])
    elif kind == "Sequence":
        for child in processor["processors"]:
            _remap_post_processor(child, plan)


def trim_tokenizer(tokenizer, plan: VocabularyPlan) -> PreTrainedTokenizerFast:
    """The tokenizer with only the kept pieces, renumbered everywhere tokenizer.json holds an id."""
    data = _backend_json(tokenizer)
    model = data["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in plan.kept_ids]
        if model.get("unk_id") is not None:
            model["unk_id"] = plan.new_id(model["unk_id"])
    else:
        piece_of = {i: piece for piece, i in model["vocab"].items()}
        model["vocab"] = {piece_of[int(old)]: new for new, old in enumerate(plan.kept_ids)}
    for token in data["added_tokens"]:
        token["id"] = plan.new_id(token["id"])
    if data.get("padding"):
        data["padding"]["pad_id"] = plan.new_id(data["padding"]["pad_id"])
    if data.get("post_processor"):
        _remap_post_processor(data["post_processor"], plan)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        model_max_length=tokenizer.model_max_length,
        model_input_names=list(tokenizer.model_input_names),
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        extra_special_tokens=list(tokenizer.extra_special_tokens),
        **tokenizer.special_tokens_map,
    )


def trim_embedder(embedder: Embedder, plan: VocabularyPlan) -> Embedder:
    """A new embedder with the kept rows of the word embeddings and the trimmed tokenizer; the
    rest of the encoder and BGE-M3's output heads are copied unchanged."""
    config = embedder.config
    if plan.original_vocab_size > config.vocab_size:
        raise ValueError(
            f"the plan counts {plan.original_vocab_size:,} tokens but the encoder has {config.vocab_size:,} rows: "
            "plan with this model's own tokenizer"
        )
    trimmed_config = copy.deepcopy(config)
    trimmed_config.vocab_size = plan.vocab_size
    for key in _SPECIAL_ID_KEYS:
        if getattr(config, key, None) is not None:
            setattr(trimmed_config, key, plan.new_id(getattr(config, key)))
    if config.position_ids_from_padding and trimmed_config.pad_token_id != config.pad_token_id:
        raise ValueError("trimming would move the padding id, from which this model counts its positions")
    # Copies of the weights (the kept rows only of the word embeddings).
    word_embeddings = "embeddings.word_embeddings.weight"
    kept = torch.as_tensor(plan.kept_ids, device=embedder.device)
    state = {k: v[kept] if k == word_embeddings else v.clone() for k, v in embedder.encoder.state_dict().items()}
    encoder = encoder_with_weights(trimmed_config, state).train(embedder.encoder.training)
    return embedder.with_parts(encoder, trim_tokenizer(embedder.tokenizer, plan))


def trimmed_size_report(
    config, structure: Structure, plan: VocabularyPlan, sequence_length: int = 512, output_head_parameters: int = 0
) -> SizeReport:
    """Sizes of `structure` with the plan's vocabulary, against the untrimmed, unpruned model."""
    return size_report(config, replace(structure, vocab_size=plan.vocab_size), sequence_length, output_head_parameters)


def vocabulary_corpus(config: VocabConfig, training_texts: Sequence[str] | None = None) -> list[str]:
    """The texts a run's vocabulary is counted on: `config.corpus` (a file or data set name, its
    train split; the run's training texts when unset), plus the STS-B train and dev sentences of
    each language in `config.languages` (test stays held out, to measure coverage on)."""
    if config.corpus is not None:
        texts = load_texts(config.corpus, "train")
    else:
        texts = list(training_texts or [])
    for language in config.languages:
        for split in ("train", "dev"):
            texts += load_texts(f"sts-{language}", split)
    if not texts:
        raise ValueError("no text to build the vocabulary from: set vocab.corpus or vocab.languages, or train on some data")
    return list(dict.fromkeys(texts))


def plan_for_run(tokenizer, config: VocabConfig, training_texts: Sequence[str] | None = None) -> VocabularyPlan:
    """The plan a run's `vocab:` section asks for."""
    corpus = vocabulary_corpus(config, training_texts)
    return plan_vocabulary(tokenizer, corpus, config.min_freq, config.top_n, config.keep_first)
