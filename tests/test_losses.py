"""The distillation losses on hand-made tensors, where the right value is known."""

import pytest
import torch
import torch.nn.functional as F

from prune_engine.embedder import pool
from prune_engine.losses import DistillationLoss, TokenDistillationLoss


def token_loss(student, teacher, mask):
    return TokenDistillationLoss()(None, None, None, None, mask, student, teacher)["distill_tokens"]


def test_token_distillation_sees_what_the_pooled_vector_hides():
    """Two token states swapped within a text: the mean-pooled vectors are identical (no signal for
    the text-level loss), the token loss is not."""
    teacher = torch.randn(1, 2, 8)
    student = teacher.flip(1).clone()
    mask = torch.ones(1, 2)
    pooled = DistillationLoss()(pool(student, mask, "mean"), pool(teacher, mask, "mean"))
    assert float(pooled["distill_cosine"]) == pytest.approx(0.0, abs=1e-6)
    expected = 1.0 - F.cosine_similarity(teacher[0, 0], teacher[0, 1], dim=0)
    assert float(token_loss(student, teacher, mask)) == pytest.approx(float(expected), rel=1e-5)


def test_token_distillation_averages_real_tokens_only():
    """Padding positions may hold anything: the loss is the mean over the real tokens."""
    teacher = torch.randn(2, 4, 8)
    student = teacher.clone()
    student[0, 0] = -teacher[0, 0]  # one real token opposite: distance 2
    student[1, 3] = torch.randn(8)  # a padding position, ignored
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    assert float(token_loss(student, teacher, mask)) == pytest.approx(2.0 / 6, rel=1e-5)


def test_token_distillation_trains_the_student_only():
    teacher = torch.randn(2, 3, 8, requires_grad=True)
    student = torch.randn(2, 3, 8, requires_grad=True)
    token_loss(student, teacher, torch.ones(2, 3)).backward()
    assert teacher.grad is None
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_layer_distillation_averages_every_layer_over_real_tokens():
    """(batch, length, layers, hidden): one layer's real token opposite its teacher's (distance 2)
    among 2 texts x 3 real tokens x 2 layers; padding ignored."""
    teacher = torch.randn(2, 4, 2, 8)
    student = teacher.clone()
    student[0, 1, 1] = -teacher[0, 1, 1]
    student[1, 3] = torch.randn(2, 8)  # padding
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    losses = TokenDistillationLoss()(None, None, None, None, mask, student_layers=student, teacher_layers=teacher)
    assert set(losses) == {"distill_layers"}
    assert float(losses["distill_layers"]) == pytest.approx(2.0 / 12, rel=1e-5)
