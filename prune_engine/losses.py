"""Training losses: distillation from the unpruned teacher, and task losses by data kind.

Distillation needs no labels and keeps the pruned model's vectors usable against an index the
original built. The task losses follow sentence-transformers' CoSENT and the InfoNCE with
in-batch negatives that BGE models are trained with. The size term (the Lagrangian) lives in
`targets.py` beside the targets it enforces.

Example:
    >>> import torch, torch.nn.functional as F
    >>> teacher = F.normalize(torch.randn(4, 8), dim=-1)
    >>> float(DistillationLoss()(teacher, teacher)["distill_cosine"])
    0.0
    >>> CoSENTLoss()(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0])) < 1e-3
    tensor(True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class DistillationLoss(nn.Module):
    """Student close to teacher: per text (1 - cosine) and the in-batch similarity matrix (MSE)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = teacher.detach()
        cosine = 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()
        similarity = F.mse_loss(cosine_matrix(student, student), cosine_matrix(teacher, teacher))
        return {"distill_cosine": cosine, "distill_similarity": similarity}


def masked_cosine_distance(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, length, ..., dim) twice, a mask of their shape without dim -> mean of 1 - cosine over
    the real tokens."""
    cosine = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)
    return ((1.0 - cosine) * mask).sum() / mask.sum().clamp(min=1)


class TokenDistillationLoss(nn.Module):
    """Token-level outputs against the teacher's on the same tokenisation: the last hidden state
    of every real token (any model; one target per token instead of one per text, so a short
    budget gets more signal), and BGE-M3's lexical weights (MSE) and multi-vectors (1 - cosine)."""

    def forward(
        self,
        student_sparse: torch.Tensor | None,
        teacher_sparse: torch.Tensor | None,
        student_colbert: torch.Tensor | None,
        teacher_colbert: torch.Tensor | None,
        attention_mask: torch.Tensor,
        student_tokens: torch.Tensor | None = None,
        teacher_tokens: torch.Tensor | None = None,
        student_layers: torch.Tensor | None = None,
        teacher_layers: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`*_layers`: (batch, length, layers, hidden), student layer i against the teacher layer
        it was cut from (CoFi's layer-wise distillation: intermediate targets for thinned layers)."""
        losses = {}
        mask = attention_mask.to(torch.float32)
        if student_tokens is not None and teacher_tokens is not None:
            losses["distill_tokens"] = masked_cosine_distance(student_tokens, teacher_tokens, mask)
        if student_layers is not None and teacher_layers is not None and student_layers.shape[2]:
            per_layer_mask = mask[:, :, None].expand(-1, -1, student_layers.shape[2])
            losses["distill_layers"] = masked_cosine_distance(student_layers, teacher_layers, per_layer_mask)
        if student_sparse is not None and teacher_sparse is not None:
            squared = (student_sparse.float() - teacher_sparse.detach().float()).pow(2) * mask
            losses["distill_sparse"] = squared.sum() / mask.sum().clamp(min=1)
        if student_colbert is not None and teacher_colbert is not None:
            # ColBERT vectors skip the CLS token.
            losses["distill_colbert"] = masked_cosine_distance(student_colbert, teacher_colbert, mask[:, 1:])
        return losses


class CoSENTLoss(nn.Module):
    """CoSENT (Su 2022): every pair (i, j) with gold_i > gold_j should have cos_i > cos_j.

    loss = log(1 + sum_{gold_i > gold_j} exp(scale * (cos_j - cos_i)))
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, cosines: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        # (n,) -> (n, n): entry (i, j) = scale * (cos_j - cos_i), kept where gold_i > gold_j.
        differences = self.scale * (cosines[None, :] - cosines[:, None])
        ordered = gold[:, None] > gold[None, :]
        differences = differences.masked_fill(~ordered, float("-inf"))
        zero = torch.zeros(1, device=cosines.device, dtype=differences.dtype)
        return torch.logsumexp(torch.cat([zero, differences.flatten()]), dim=0)


class ScoredPairsLoss(nn.Module):
    """CoSENT on the cosines of a batch's pairs: texts[:n] pair with texts[n:2n]."""

    def __init__(self, scale: float):
        super().__init__()
        self.cosent = CoSENTLoss(scale)

    def forward(self, dense: torch.Tensor, batch) -> torch.Tensor:
        n = batch.n
        cosines = F.cosine_similarity(dense[:n], dense[n : 2 * n], dim=-1)
        return self.cosent(cosines.float(), batch.scores.to(cosines.device))


class QueryPassageLoss(nn.Module):
    """InfoNCE: query i (texts[:n]) against the batch's passages (texts[n:task_end])."""

    def __init__(self, temperature: float):
        super().__init__()
        self.infonce = InfoNCELoss(temperature)

    def forward(self, dense: torch.Tensor, batch) -> torch.Tensor:
        return self.infonce(dense[: batch.n].float(), dense[batch.n : batch.task_end].float())


def task_loss(kind: str, weights) -> nn.Module | None:
    """The task loss of a data kind (`LossConfig` gives its settings); plain text has none."""
    if kind == "scored_pairs":
        return ScoredPairsLoss(weights.cosent_scale)
    if kind == "query_passage":
        return QueryPassageLoss(weights.temperature)
    return None


class InfoNCELoss(nn.Module):
    """Query i's positive is passage i; every other passage in the batch (and any hard
    negatives appended after them) is a negative."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        # (n_queries, n_passages) scores; the target of row i is column i.
        logits = cosine_matrix(queries, passages) / self.temperature
        targets = torch.arange(queries.shape[0], device=queries.device)
        return F.cross_entropy(logits, targets)
