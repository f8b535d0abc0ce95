"""Gradient importance of attention heads and FFN neurons (Michel, Levy & Neubig 2019, "Are Sixteen
Heads Really Better than One?"): where L0's gates start (`gate_init: auto` with task pairs, or
`importance`), and the one-shot baseline the benchmarks measure L0 against.

Importance of a unit = |sum over examples of d(task loss)/d(gate)| with every gate at 1: the
first-order change of the loss when the unit is removed, normalised per layer (L2) as the paper
does, so that layers compare. It needs a task loss (scored or query-passage pairs): at the start
of a run the student is the teacher, so every distillation gradient is zero.

Example:
    >>> import torch
    >>> keep_probabilities([torch.tensor([0.1, 0.3]), torch.tensor([0.2])], low=0.9, high=0.99)
    tensor([0.9000, 0.9900, 0.9450])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .batches import Batch, make_batch
from .config import LossConfig, RunConfig
from .data import TrainingData
from .embedder import Embedder
from .losses import task_loss
from .modeling_prunable_encoder import EncoderGates
from .run_dir import TrainingError

# Initial P(gate kept) of the least and the most important unit under `gate_init: importance`: every
# gate still starts (almost) open, so the student starts as the teacher; the ranking is a head start
# of about three log-alpha units that the size constraint meets first at the least important units.
INIT_LOW, INIT_HIGH = 0.9, 0.995
# Batches of task data that rank the units (also those of the benchmarks' one-shot importance baseline).
IMPORTANCE_BATCHES = 50


def gradient_importance(embedder: Embedder, batches: Iterable[Batch], max_length: int = 128,
                        loss_config: LossConfig | None = None) -> dict[str, list[torch.Tensor]]:
    """`batches` of scored pairs or query-passage pairs -> {"heads", "ffn"}: per layer, one score per unit."""
    config = embedder.config
    gates = EncoderGates(
        heads=[torch.ones(h, requires_grad=True) for h in config.heads_per_layer],
        ffn=[torch.ones(f, requires_grad=True) for f in config.intermediate_sizes],
    )
    losses = {}
    totals = {"heads": [torch.zeros(h) for h in config.heads_per_layer],
              "ffn": [torch.zeros(f) for f in config.intermediate_sizes]}
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    for batch in batches:
        features = {k: v.to(device) for k, v in embedder.tokenize(batch.texts, max_length).items()}
        dense = embedder(features, gates=EncoderGates(heads=[g.to(device) for g in gates.heads],
                                                      ffn=[g.to(device) for g in gates.ffn])).dense
        if batch.kind not in losses:
            losses[batch.kind] = task_loss(batch.kind, loss_config or LossConfig())
        if losses[batch.kind] is None:
            raise ValueError("importance needs a task loss: scored pairs or query-passage pairs")
        loss = losses[batch.kind](dense, batch)
        gradients = torch.autograd.grad(loss, gates.heads + gates.ffn)
        for i, grad in enumerate(gradients[: config.num_hidden_layers]):
            totals["heads"][i] += grad.cpu()
        for i, grad in enumerate(gradients[config.num_hidden_layers :]):
            totals["ffn"][i] += grad.cpu()
    embedder.train(was_training)
    return {name: [t.abs() / t.abs().norm().clamp(min=1e-12) for t in per_layer] for name, per_layer in totals.items()}


def keep_probabilities(scores: list[torch.Tensor], low: float = INIT_LOW, high: float = INIT_HIGH) -> torch.Tensor:
    """Per-layer scores -> (n_units,) initial P(gate kept), flat in layer order: each unit's rank over
    the whole model, mapped linearly onto [low, high] (ranks, not scores: a few large gradients must
    not close every other gate)."""
    flat = torch.cat(scores)
    ranks = torch.argsort(torch.argsort(flat)).to(torch.float32)  # 0 = least important
    return low + (high - low) * ranks / max(flat.numel() - 1, 1)


def starts_ranked(config: RunConfig, data: TrainingData) -> bool:
    """Whether the gates start ranked by importance: asked for, or `auto` with pairs to rank them on."""
    return config.gate_init == "importance" or (config.gate_init == "auto" and data.kind != "text")


def gate_start(student: Embedder, data: TrainingData, config: RunConfig, length: int) -> dict[str, torch.Tensor] | None:
    """A run's initial head and FFN keep probabilities when its gates start ranked (None: uniform),
    ranked on IMPORTANCE_BATCHES seeded batches of its task data (the same on every process)."""
    if not starts_ranked(config, data):
        return None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed)).tolist()
    size = config.batch_size
    batches = [make_batch(data, order[i : i + size]) for i in range(0, min(len(order), size * IMPORTANCE_BATCHES), size)]
    try:
        scores = gradient_importance(student, batches, length, config.loss)
    except ValueError as error:
        raise TrainingError(f"gate_init: importance: {error}; {config.dataset} has none. Give a dataset of "
                            "scored or query-passage pairs, or use gate_init: uniform") from None
    return {name: keep_probabilities(scores[name]) for name in ("heads", "ffn") if name in config.structures}
