"""What one training step sees: which examples and documents, in which padding groups.

Task examples and documents are drawn in seeded permutations, one per pass over them, so the
batches of a step depend only on the seed and the step: a resumed run sees exactly what an
uninterrupted one would. Documents feed the distillation losses alone and are tokenised apart
from the task texts, so short sentences are not padded to passage length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import TrainingData
from .embedder import EmbeddingOutput

# Documents are drawn from their own permutations, seeded apart from the task examples'.
DOCUMENT_SEED_OFFSET = 1_000_003


@dataclass
class Batch:
    """Texts encoded in one forward pass. Scored pairs: texts[:n] pair with texts[n:2n].
    Query-passage: texts[:n] are queries, texts[n:task_end] their passages (then hard negatives).
    The last `distill_only` texts (documents) feed the distillation losses alone."""

    kind: str
    texts: list[str]
    n: int
    scores: torch.Tensor | None = None
    distill_only: int = 0

    @property
    def task_end(self) -> int:
        return len(self.texts) - self.distill_only

    @property
    def padding_groups(self) -> list[list[str]]:
        """Task texts and documents, each tokenised on its own."""
        return [group for group in (self.texts[: self.task_end], self.texts[self.task_end :]) if group]


def make_batch(data: TrainingData, indices: Sequence[int], documents: Sequence[str] = ()) -> Batch:
    texts, scores = data.batch(indices)
    scores_tensor = torch.tensor(scores) if scores is not None else None
    return Batch(data.kind, texts + list(documents), len(indices), scores_tensor, len(documents))


def merge_outputs(outputs: list[EmbeddingOutput]) -> EmbeddingOutput:
    """Padding groups -> one output: (batch_i, length_i, ...) tensors zero-padded to the longest
    length and concatenated along the batch."""
    if len(outputs) == 1:
        return outputs[0]
    length = max(o.attention_mask.shape[1] for o in outputs)

    def cat(name: str, trim: int = 0) -> torch.Tensor | None:
        parts = [getattr(o, name) for o in outputs]
        if parts[0] is None:
            return None
        # Pad dimension 1 (tokens) at its end: F.pad counts dimensions from the last one.
        padded = [F.pad(p, [0, 0] * (p.dim() - 2) + [0, length - trim - p.shape[1]]) for p in parts]
        return torch.cat(padded)

    return EmbeddingOutput(
        dense=torch.cat([o.dense for o in outputs]), token_states=cat("token_states"),
        attention_mask=cat("attention_mask"), sparse_weights=cat("sparse_weights"),
        colbert_vectors=cat("colbert_vectors", trim=1), layer_states=cat("layer_states"),
    )


class BatchSchedule:
    """The examples and documents of every step, for process `rank` of `world`."""

    def __init__(self, n_examples: int, documents: Sequence[str], batch_size: int, documents_per_batch: int,
                 seed: int, max_examples: int | None = None, world: int = 1, rank: int = 0):
        self.examples = list(range(n_examples))
        if max_examples and max_examples < n_examples:
            self.examples = sorted(random.Random(seed).sample(self.examples, max_examples))
        self.documents = list(documents)
        self.global_batch = batch_size * world
        self.documents_per_step = documents_per_batch * world if self.documents else 0
        self.seed, self.world, self.rank = seed, world, rank
        self.steps_per_epoch = max(1, len(self.examples) // self.global_batch)

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + epoch))
        chunk = order[position * self.global_batch : (position + 1) * self.global_batch].tolist()
        return [self.examples[i] for i in chunk[self.rank :: self.world]]

    def documents_of(self, step: int) -> list[str]:
        """Documents are read in a seeded permutation per pass, continuing across steps."""
        count = len(self.documents)
        orders: dict[int, list[int]] = {}
        chosen = []
        for position in range(step * self.documents_per_step, (step + 1) * self.documents_per_step):
            epoch, offset = divmod(position, count)
            if epoch not in orders:
                generator = torch.Generator().manual_seed(self.seed + DOCUMENT_SEED_OFFSET + epoch)
                orders[epoch] = torch.randperm(count, generator=generator).tolist()
            chosen.append(self.documents[orders[epoch][offset]])
        return chosen[self.rank :: self.world]

    @staticmethod
    def micro_batches(indices: list[int], parts: int) -> list[list[int]]:
        """Gradient accumulation: `parts` slices of at least two examples (the losses compare
        examples within a batch)."""
        size = math.ceil(len(indices) / parts)
        return [indices[i : i + size] for i in range(0, len(indices), size) if len(indices[i : i + size]) >= 2]
