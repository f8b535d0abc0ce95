"""What a training step minimises, and the optimisers that minimise it.

Distillation from the frozen teacher (text vectors, the in-batch similarity structure, and
optionally every token's last hidden state, every kept layer's output against the teacher layer
it was cut from, and BGE-M3's lexical weights and multi-vectors), the
task loss of the training data's kind, and during the mask phase the Lagrangian size term.
Everything trained is one module (so DDP wraps one thing): the student and, while masks are
learned, its gates and the Lagrangian.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .batches import Batch, merge_outputs
from .config import RunConfig
from .embedder import Embedder, EmbeddingOutput
from .l0 import GATE_ADAM_BETAS, L0Masks
from .lagrangian import Lagrangian
from .losses import DistillationLoss, TokenDistillationLoss, task_loss
from .targets import SizeTarget


class PruningObjective(nn.Module):
    def __init__(self, student: Embedder, config: RunConfig, task_kind: str, masks: L0Masks | None = None,
                 lagrangian: Lagrangian | None = None, target: SizeTarget | None = None,
                 teacher_layers: list[int] | None = None):
        """`teacher_layers`: the teacher layer each student layer was cut from (None: the same
        index, as while masks are learned)."""
        super().__init__()
        self.student = student
        self.teacher_layers = teacher_layers
        self.masks = masks
        self.lagrangian = lagrangian
        self.target = target
        self.weights = config.loss
        self.distill = DistillationLoss()
        self.token_distill = TokenDistillationLoss()
        self.task = task_loss(task_kind, config.loss)

    def forward(self, groups: list[dict], batch: Batch, teacher_outs: list[EmbeddingOutput],
                ramp: float) -> dict[str, torch.Tensor]:
        """`groups`: the batch's features in padding groups (`Batch.padding_groups`), with the
        teacher's output for each; one gate sample serves them all."""
        gates = self.masks.gates() if self.masks is not None else None
        layers = self.weights.distill_layers > 0  # an unweighted loss is neither computed nor logged
        out = merge_outputs([self.student(features, gates=gates, layer_states=layers) for features in groups])
        teacher_out = merge_outputs(teacher_outs)
        teacher_layers = teacher_out.layer_states if layers else None
        if teacher_layers is not None and self.teacher_layers is not None:
            teacher_layers = teacher_layers[:, :, self.teacher_layers]
        losses = self.distill(out.dense, teacher_out.dense)
        tokens = self.weights.distill_tokens > 0
        losses.update(
            self.token_distill(
                out.sparse_weights, teacher_out.sparse_weights,
                out.colbert_vectors, teacher_out.colbert_vectors, out.attention_mask,
                student_tokens=out.token_states if tokens else None,
                teacher_tokens=teacher_out.token_states if tokens else None,
                student_layers=out.layer_states, teacher_layers=teacher_layers,
            )
        )
        if self.task is not None:
            losses["task"] = self.task(out.dense, batch)
        # Each loss is weighted by the LossConfig field of its name.
        total = sum(getattr(self.weights, name) * value.float() for name, value in losses.items())
        if self.masks is not None:
            losses["lagrangian"] = self.lagrangian(self.target.gaps(self.masks, ramp))
            total = total + losses["lagrangian"]
        losses["total"] = total
        return losses


def weights_and_gates_optimizer(student: Embedder, masks: L0Masks | None, config: RunConfig) -> torch.optim.AdamW:
    """Group 0: the trainable weights (lr, weight decay). Group 1, in the mask phase: the gate
    logits (gate_lr, no decay, short momentum so they follow the moving target)."""
    weights = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": weights, "lr": config.optimizer.lr, "weight_decay": config.optimizer.weight_decay}]
    if masks is not None:
        groups.append({"params": list(masks.parameters()), "lr": config.optimizer.gate_lr, "weight_decay": 0.0,
                       "betas": GATE_ADAM_BETAS})
    return torch.optim.AdamW(groups)


def warmup_then_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """The weights' learning-rate factor: linear warm-up, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def scheduler_at(optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int,
                 step: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The weights follow warm-up and decay, the gates keep their rate; positioned at `step`."""
    warmup = max(1, round(total_steps * config.optimizer.warmup_fraction))
    schedules = [warmup_then_linear_decay(warmup, total_steps)] + [lambda _: 1.0] * (len(optimizer.param_groups) - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules, last_epoch=-1)
    # LambdaLR steps once at construction; move it to the run's current step.
    for group, schedule, base in zip(optimizer.param_groups, schedules, scheduler.base_lrs, strict=True):
        group["lr"] = base * schedule(step)
    scheduler.last_epoch = step
    return scheduler
