"""The frozen original's outputs, computed once per text.

Distillation draws the same documents and sentences again on every pass, and the teacher never
changes, so its outputs are kept in memory (up to `cache_mb`) and reused. Each text is encoded on
its own, without padding: its outputs then do not depend on which texts shared its batch, so a
resumed run, whose cache starts empty, gets exactly the targets an uninterrupted one used. On a
CPU a text alone costs what it costs in a batch (the matrices are large enough either way).
With `cache_mb=0` the teacher encodes each padding group as a batch, as the student does.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .embedder import Embedder, EmbeddingOutput


class Teacher:
    def __init__(self, embedder: Embedder, max_length: int, cache_mb: int, layer_states: bool = False):
        self.embedder = embedder
        self.max_length = max_length
        self.layer_states = layer_states  # every layer's output too (layer-wise distillation)
        self.budget = cache_mb * 2**20
        self.cached: dict[str, dict[str, torch.Tensor]] = {}
        self.cached_bytes = 0
        self.hits = self.misses = 0
        self.seconds = 0.0  # spent computing outputs (a run reports it as the teacher's time)

    @torch.no_grad()
    def outputs(self, texts: list[str], features: dict[str, torch.Tensor], autocast) -> EmbeddingOutput:
        """The teacher's output for `texts`, padded like `features` (the student's tokenisation)."""
        if self.budget <= 0:
            started = time.perf_counter()
            with autocast():
                out = self.embedder(features, layer_states=self.layer_states)
            self.seconds += time.perf_counter() - started
            return out
        per_text = [self._one(text, autocast) for text in texts]
        mask = features["attention_mask"]
        length = mask.shape[1]

        def stacked(name: str, trim: int = 0) -> torch.Tensor | None:
            if per_text[0][name] is None:
                return None
            # Each (length_i, ...) tensor zero-padded to (length - trim, ...), then (batch, length - trim, ...).
            parts = [F.pad(p[name], [0, 0] * (p[name].dim() - 1) + [0, length - trim - p[name].shape[0]])
                     for p in per_text]
            return torch.stack(parts).to(mask.device)

        return EmbeddingOutput(
            dense=torch.stack([p["dense"] for p in per_text]).to(mask.device),
            token_states=stacked("token_states"), attention_mask=mask,
            sparse_weights=stacked("sparse_weights"), colbert_vectors=stacked("colbert_vectors", trim=1),
            layer_states=stacked("layer_states"),
        )

    def _one(self, text: str, autocast) -> dict[str, torch.Tensor | None]:
        found = self.cached.get(text)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        started = time.perf_counter()
        with autocast():
            out = self.embedder(self.embedder.tokenize([text], self.max_length), layer_states=self.layer_states)
        result = {
            "dense": out.dense[0],
            "token_states": out.token_states[0],  # (length, hidden)
            "sparse_weights": None if out.sparse_weights is None else out.sparse_weights[0],
            "colbert_vectors": None if out.colbert_vectors is None else out.colbert_vectors[0],
            "layer_states": None if out.layer_states is None else out.layer_states[0],  # (length, layers, hidden)
        }
        result = {k: None if v is None else v.detach().to("cpu", copy=True) for k, v in result.items()}
        self.seconds += time.perf_counter() - started
        size = sum(v.numel() * v.element_size() for v in result.values() if v is not None)
        if self.cached_bytes + size <= self.budget:
            self.cached[text] = result
            self.cached_bytes += size
        return result
