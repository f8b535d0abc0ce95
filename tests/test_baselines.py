"""The one-shot importance baseline: real gradients on the real MiniLM, budgets met exactly."""

import torch

from benchmarks.baselines import evenly_spaced, layer_drop_masks, masks_for_budget
from prune_engine.accounting import count_parameters
from prune_engine.batches import make_batch
from prune_engine.data import load_training_data
from prune_engine.importance import gradient_importance
from prune_engine.targets import ParameterBudget


def test_evenly_spaced_layers_end_at_the_top():
    assert evenly_spaced(6, 3) == [1, 3, 5]
    assert evenly_spaced(6, 2) == [2, 5]
    assert evenly_spaced(24, 18)[-1] == 23 and len(evenly_spaced(24, 18)) == 18


def test_importance_ranks_units_and_meets_a_budget(minilm):
    data = load_training_data("demo", "train")
    importance = gradient_importance(minilm, [make_batch(data, range(0, 8)), make_batch(data, range(8, 16))], 32)
    config = minilm.config
    assert [len(h) for h in importance["heads"]] == config.heads_per_layer
    for per_layer in importance["heads"] + importance["ffn"]:
        assert torch.all(per_layer >= 0) and abs(float(per_layer.norm()) - 1.0) < 1e-4
        assert float(per_layer.max()) > float(per_layer.min())  # real gradients tell units apart

    budget = ParameterBudget.from_fraction(config, 0.3).parameters
    masks = masks_for_budget(config, importance, budget)
    encoder = count_parameters(config, masks.kept_structure(config.vocab_size)).encoder
    assert budget - (2 * config.hidden_size + 1) < encoder <= budget
    kept_heads = torch.cat(masks.heads)
    # The most important head overall is kept, the least important is not.
    flat = torch.cat(importance["heads"])
    assert kept_heads[flat.argmax()] and not kept_heads[flat.argmin()]


def test_layer_drop_masks_keep_whole_layers(minilm):
    masks = layer_drop_masks(minilm.config, [0, 5])
    structure = masks.kept_structure(minilm.config.vocab_size)
    assert structure.heads_per_layer == (12, 12) and structure.intermediate_sizes == (1536, 1536)
