"""Gradient importance as where L0's gates start (`gate_init: auto | importance`)."""

import json

import pytest
import torch
from conftest import tiny_config

from prune_engine.config import ConfigError, load_config
from prune_engine.data import DEMO_SENTENCES
from prune_engine.importance import INIT_HIGH, INIT_LOW, keep_probabilities
from prune_engine.l0 import HardConcreteGates, L0Masks
from prune_engine.run_dir import TrainingError
from prune_engine.trainer import PruningRun


def test_ranks_over_the_whole_model_map_onto_the_initial_range():
    scores = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.3, 0.7])]
    start = keep_probabilities(scores, low=0.9, high=0.98)
    # Ranks 2, 0, 4 | 1, 3 of 5 units: 0.9 + 0.08 * rank / 4.
    assert start.tolist() == pytest.approx([0.94, 0.9, 0.98, 0.92, 0.96])
    assert keep_probabilities([torch.tensor([3.0])]).tolist() == pytest.approx([INIT_LOW])
    # A few large gradients do not close the other gates: only the order counts.
    assert keep_probabilities([torch.tensor([1e-6, 2e-6, 1e6])]).tolist() == pytest.approx([INIT_LOW, (INIT_LOW + INIT_HIGH) / 2, INIT_HIGH])


def test_gates_start_at_the_given_keep_probability_per_gate():
    start = torch.tensor([0.9, 0.95, 0.99])
    gates = HardConcreteGates([2, 1], start)
    assert gates.keep_probability().detach() == pytest.approx(start, abs=1e-6)
    assert gates.deterministic()[0] < gates.deterministic()[1] <= gates.deterministic()[2]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        HardConcreteGates([2], torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="must have"):
        HardConcreteGates([2], torch.tensor([0.5, 0.6, 0.7]))


def test_masks_take_per_gate_starts_for_some_structures_only(minilm):
    config = minilm.config
    heads = torch.linspace(0.9, 0.99, sum(config.heads_per_layer))
    masks = L0Masks(config, ("layers", "heads", "ffn"), init_keep_probability=0.95, init_per_gate={"heads": heads})
    assert masks.groups["heads"].keep_probability().detach() == pytest.approx(heads, abs=1e-6)
    assert masks.groups["ffn"].keep_probability().detach() == pytest.approx(torch.full((sum(config.intermediate_sizes),), 0.95))


def test_importance_start_needs_task_data(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="gate_init must be one of"):
        tiny_config(tiny_model_dir, tmp_path / "run", "gate_init=ranked")
    with pytest.raises(ConfigError, match="needs task data: set dataset"):
        load_config(None, [f"model={tiny_model_dir}", f"documents={DEMO_SENTENCES}", "dataset=null",
                           "target_params.fraction=0.5", "gate_init=importance"])
    # Plain texts have no task loss: refused when the run starts, before a step is trained.
    config = tiny_config(tiny_model_dir, tmp_path / "text", f"dataset={DEMO_SENTENCES}", "gate_init=importance")
    with pytest.raises(TrainingError, match="importance needs a task loss.*use gate_init: uniform"):
        PruningRun(config).run()
    assert not (tmp_path / "text" / "metrics.jsonl").exists() or not (tmp_path / "text" / "metrics.jsonl").read_text()


def first_head_gates(run_dir) -> list[float]:
    snapshot = json.loads((run_dir / "mask_snapshots.jsonl").read_text().splitlines()[0])
    return [value for layer in snapshot["heads"] for value in layer]


def test_an_importance_start_spreads_the_gates_a_uniform_start_does_not(tiny_model_dir, tmp_path):
    uniform = PruningRun(tiny_config(tiny_model_dir, tmp_path / "uniform", "max_duration=2ba", "eval_splits=[]",
                                     "gate_init=uniform")).run()
    ranked = PruningRun(tiny_config(tiny_model_dir, tmp_path / "ranked", "max_duration=2ba", "eval_splits=[]",
                                    "gate_init=importance")).run()
    assert min(first_head_gates(uniform.run_dir)) > 0.95
    heads = first_head_gates(ranked.run_dir)
    assert min(heads) < 0.8 and max(heads) > 0.95  # the least important head starts half closed
    assert "gate_init: importance" in (ranked.run_dir / "config.yaml").read_text().replace("'", "")


def test_auto_ranks_the_gates_on_pairs_and_says_why_not_on_plain_texts(tiny_model_dir, tmp_path):
    events = []
    pairs = PruningRun(tiny_config(tiny_model_dir, tmp_path / "pairs", "max_duration=2ba", "eval_splits=[]")).run()
    assert load_config(pairs.run_dir / "config.yaml").gate_init == "auto"  # the default
    heads = first_head_gates(pairs.run_dir)
    assert min(heads) < 0.8 and max(heads) > 0.95  # STS-B pairs: ranked, as `importance`
    texts = PruningRun(tiny_config(tiny_model_dir, tmp_path / "texts", f"dataset={DEMO_SENTENCES}", "max_duration=2ba",
                                   "eval_splits=[]"), callbacks=[events.append]).run()
    assert min(first_head_gates(texts.run_dir)) > 0.95  # plain texts: nothing to rank on, uniform ...
    notes = [event.message for event in events if event.kind == "warning"]
    assert any("gates start uniform" in note and "gate_init: uniform" in note for note in notes)  # ... and said so
