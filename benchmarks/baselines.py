"""The simple alternatives L0 pruning is measured against: evenly spaced whole layers, and heads
and FFN neurons by one-shot gradient importance (scored in `prune_engine.importance`). The
importance budget is met by keeping the same share of heads and of neurons, each ranked globally,
then filling what is left with the best remaining neurons.
"""

from __future__ import annotations

import torch

from prune_engine.accounting import count_parameters, ffn_parameters_per_neuron
from prune_engine.l0 import StructureMasks


def _keep_top(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    flat = torch.cat(scores)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    count = int(round(share * flat.numel()))
    if count:
        keep[torch.topk(flat, count).indices] = True
    return list(torch.split(keep, [len(s) for s in scores]))


def masks_for_budget(config, importance: dict[str, list[torch.Tensor]], encoder_parameters: int) -> StructureMasks:
    """All layers kept; heads and neurons by importance so the encoder size is the largest not above
    the budget (within one neuron's cost)."""

    def size(masks: StructureMasks) -> int:
        return count_parameters(config, masks.kept_structure(config.vocab_size)).encoder

    def at(share: float) -> StructureMasks:
        layers = torch.ones(config.num_hidden_layers, dtype=torch.bool)
        return StructureMasks(layers, _keep_top(importance["heads"], share), _keep_top(importance["ffn"], share))

    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the kept share
        middle = (low + high) / 2
        low, high = (middle, high) if size(at(middle)) <= encoder_parameters else (low, middle)
    masks = at(low)
    spare = encoder_parameters - size(masks)
    neuron_cost = ffn_parameters_per_neuron(config.hidden_size)
    flat_scores = torch.cat(importance["ffn"])
    flat_kept = torch.cat(masks.ffn)
    for index in torch.argsort(flat_scores, descending=True).tolist():
        if spare < neuron_cost:
            break
        if not flat_kept[index]:
            flat_kept[index] = True
            spare -= neuron_cost
    return StructureMasks(masks.layers, masks.heads, list(torch.split(flat_kept, list(config.intermediate_sizes))))


def layer_drop_masks(config, keep_layers: list[int]) -> StructureMasks:
    """The simplest alternative: keep whole layers (evenly spaced or the first ones)."""
    layers = torch.zeros(config.num_hidden_layers, dtype=torch.bool)
    layers[keep_layers] = True
    return StructureMasks(
        layers,
        [torch.ones(h, dtype=torch.bool) for h in config.heads_per_layer],
        [torch.ones(f, dtype=torch.bool) for f in config.intermediate_sizes],
    )


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread over the depth, always including the last layer."""
    if keep <= 0:
        return []
    step = n_layers / keep
    return sorted({min(n_layers - 1, int(round(step * (i + 1))) - 1) for i in range(keep)})
