"""A sentence embedder: the prunable encoder, its tokenizer, its pooling and BGE-M3's output heads.

Dense vectors are pooled as the model's sentence-transformers config declares (CLS for BGE-M3,
mean for MiniLM). When BGE-M3's `sparse_linear.pt` / `colbert_linear.pt` are present, the sparse
lexical weights and the multi-vector (ColBERT) output are computed the way FlagEmbedding does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .modeling_prunable_encoder import EncoderGates, PrunableEncoderModel

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens")


@dataclass
class EmbeddingOutput:
    dense: torch.Tensor  # (batch, hidden), normalised when the model normalises
    token_states: torch.Tensor  # (batch, length, hidden)
    attention_mask: torch.Tensor  # (batch, length)
    sparse_weights: torch.Tensor | None = None  # (batch, length): BGE-M3 lexical weight per token
    colbert_vectors: torch.Tensor | None = None  # (batch, length - 1, colbert_dim), normalised, zero on padding
    layer_states: torch.Tensor | None = None  # (batch, length, layers, hidden): every layer's output, when asked


@dataclass(frozen=True)
class Encoded:
    """One model's outputs for a list of texts, as numpy arrays. Sparse weights are keyed by token
    text, not id, so a model with a trimmed vocabulary can be scored against the original's index."""

    dense: np.ndarray
    sparse: list[dict[str, float]] | None = None
    colbert: list[np.ndarray] | None = None


def pool(token_states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, length, hidden) -> (batch, hidden)."""
    if mode == "cls":
        return token_states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    if mode == "max":
        return token_states.masked_fill(mask == 0, torch.finfo(token_states.dtype).min).max(dim=1).values
    summed = (token_states * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    if mode == "mean":
        return summed / counts
    if mode == "mean_sqrt_len_tokens":
        return summed / counts.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOLING_MODES}")


class Embedder(nn.Module):
    def __init__(
        self,
        encoder: PrunableEncoderModel,
        tokenizer,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 512,
        sparse_linear: nn.Linear | None = None,
        colbert_linear: nn.Linear | None = None,
        source: str = "",
        pooler: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {pooling!r}; choose one of {POOLING_MODES}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear
        self.source = source
        # The source checkpoint's pooler weights ("pooler.dense.weight" / ".bias"): never used for sentence
        # embeddings, never trained (not a registered parameter), only shipped so stock loaders find every weight.
        self.pooler = pooler

    def with_parts(self, encoder: PrunableEncoderModel, tokenizer=None) -> Embedder:
        """A new embedder around another encoder (pruned, trimmed, restored) with this one's pooling,
        length, copies of its output heads and its (never modified) pooler weights; this one is left
        untouched (it may be the teacher)."""
        return Embedder(
            encoder,
            tokenizer if tokenizer is not None else self.tokenizer,
            pooling=self.pooling,
            normalize=self.normalize,
            max_length=self.max_length,
            sparse_linear=copy.deepcopy(self.sparse_linear),
            colbert_linear=copy.deepcopy(self.colbert_linear),
            source=self.source,
            pooler=self.pooler,
        )

    @property
    def config(self):
        return self.encoder.config

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def has_multi_output(self) -> bool:
        return self.sparse_linear is not None or self.colbert_linear is not None

    def output_head_parameters(self) -> int:
        return sum(p.numel() for head in (self.sparse_linear, self.colbert_linear) if head for p in head.parameters())

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, features: dict[str, torch.Tensor], gates: EncoderGates | None = None,
                layer_states: bool = False) -> EmbeddingOutput:
        """`layer_states`: also every layer's output (layer-wise distillation)."""
        encoded = self.encoder(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            token_type_ids=features.get("token_type_ids"),
            gates=gates,
            output_hidden_states=layer_states,
        )
        token_states = encoded.last_hidden_state
        mask = features["attention_mask"]
        dense = pool(token_states, mask, self.pooling)
        if self.normalize:
            dense = F.normalize(dense, dim=-1)
        out = EmbeddingOutput(dense=dense, token_states=token_states, attention_mask=mask)
        if layer_states:
            # hidden_states: the embeddings' output, then one (batch, length, hidden) per layer;
            # the layers' are stacked on a new dimension 2: (batch, length, layers, hidden).
            per_layer = encoded.hidden_states[1:]
            out.layer_states = (torch.stack(per_layer, dim=2) if per_layer
                                else token_states.new_zeros((*token_states.shape[:2], 0, token_states.shape[-1])))
        if self.sparse_linear is not None:
            out.sparse_weights = torch.relu(self.sparse_linear(token_states)).squeeze(-1) * mask
        if self.colbert_linear is not None:
            vectors = self.colbert_linear(token_states[:, 1:]) * mask[:, 1:, None]
            out.colbert_vectors = F.normalize(vectors, dim=-1)
        return out

    def _batches(self, texts: Sequence[str], batch_size: int, show_progress: bool, description: str):
        """Yields (original indices, batch output), longest texts first so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=description, disable=not show_progress, unit="batch"):
            indices = order[start : start + batch_size]
            features = self.tokenize([texts[i] for i in indices])
            yield indices, features, self(features)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False, description: str = "encode"
    ) -> np.ndarray:
        """Dense embeddings as float32 (n_texts, hidden), in the order given."""
        was_training = self.training
        self.eval()
        result = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        for indices, _, out in self._batches(texts, batch_size, show_progress, description):
            result[indices] = out.dense.float().cpu().numpy()
        self.train(was_training)
        return result

    @torch.inference_mode()
    def encode_multi(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False, description: str = "encode"
    ) -> dict[str, list]:
        """BGE-M3's three outputs per text: dense vector, {token id: lexical weight}, token vectors."""
        was_training = self.training
        self.eval()
        special = set(self.tokenizer.all_special_ids)
        dense: list = [None] * len(texts)
        sparse: list = [None] * len(texts)
        colbert: list = [None] * len(texts)
        for indices, features, out in self._batches(texts, batch_size, show_progress, description):
            for row, index in enumerate(indices):
                dense[index] = out.dense[row].float().cpu().numpy()
                length = int(features["attention_mask"][row].sum())
                if out.sparse_weights is not None:
                    weights: dict[int, float] = {}
                    for token, weight in zip(
                        features["input_ids"][row, :length].tolist(),
                        out.sparse_weights[row, :length].tolist(),
                        strict=True,
                    ):
                        if token not in special and weight > 0:
                            weights[token] = max(weight, weights.get(token, 0.0))
                    sparse[index] = weights
                if out.colbert_vectors is not None:
                    colbert[index] = out.colbert_vectors[row, : length - 1].float().cpu().numpy()
        self.train(was_training)
        return {"dense": dense, "sparse": sparse, "colbert": colbert}
