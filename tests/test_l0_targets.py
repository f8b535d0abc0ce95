"""Hard-concrete gates, the expected size they give, the Lagrangian that drives it to a target,
and the final top-k masks."""

from __future__ import annotations

import math

import pytest
import torch

from prune_engine.accounting import count_parameters, ffn_parameters_per_neuron
from prune_engine.l0 import (
    GATE_ADAM_BETAS,
    STRETCH_HIGH,
    STRETCH_LOW,
    TEMPERATURE,
    HardConcreteGates,
    L0Masks,
    StructureMasks,
)
from prune_engine.lagrangian import INTEGRAL_LEAK, INTEGRAL_RATE, INTEGRATION_BAND, Lagrangian
from prune_engine.modeling_prunable_encoder import PrunableEncoderConfig
from prune_engine.presets import bge_m3_config
from prune_engine.targets import ArchitectureTarget, ParameterBudget, TargetError


def tiny_config(**overrides) -> PrunableEncoderConfig:
    defaults = dict(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
    return PrunableEncoderConfig(**{**defaults, **overrides})


def set_log_alpha(masks: L0Masks, seed: int, scale: float = 3.0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in masks.groups.values():
            group.log_alpha.copy_(torch.randn(len(group), generator=generator) * scale)


# --- hard-concrete gates ------------------------------------------------------------------------


def test_samples_lie_in_unit_interval_with_exact_zeros_and_ones():
    torch.manual_seed(0)
    gates = HardConcreteGates([5000])
    with torch.no_grad():
        gates.log_alpha.fill_(0.0)
    samples = gates.sample()
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    zeros, ones = (samples == 0).float().mean(), (samples == 1).float().mean()
    assert 0.05 < zeros < 0.3 and 0.05 < ones < 0.3  # the stretch puts real mass on both ends
    assert ((samples > 0) & (samples < 1)).float().mean() > 0.4


def test_sample_is_differentiable_in_log_alpha():
    torch.manual_seed(0)
    gates = HardConcreteGates([64])
    with torch.no_grad():
        gates.log_alpha.fill_(0.5)
    gates.sample().sum().backward()
    assert gates.log_alpha.grad is not None and gates.log_alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("log_alpha", [-2.0, -0.5, 0.0, 1.0, 2.5])
def test_keep_probability_matches_monte_carlo(log_alpha):
    torch.manual_seed(42)
    gates = HardConcreteGates([20_000])
    with torch.no_grad():
        gates.log_alpha.fill_(log_alpha)
        estimate = (gates.sample() > 0).float().mean().item()
        predicted = gates.keep_probability()[0].item()
    assert abs(estimate - predicted) < 0.02
    # And the closed form, written out: P(z > 0) = sigmoid(log_alpha - beta * log(-low / high)).
    closed = 1 / (1 + math.exp(-(log_alpha - TEMPERATURE * math.log(-STRETCH_LOW / STRETCH_HIGH))))
    assert predicted == pytest.approx(closed, rel=1e-5)


def test_initial_keep_probability():
    gates = HardConcreteGates([3, 5], init_keep_probability=0.9)
    assert torch.allclose(gates.keep_probability(), torch.full((8,), 0.9))
    assert [len(part) for part in gates.split(gates.keep_probability())] == [3, 5]
    assert torch.allclose(gates.group_sums(gates.keep_probability()), torch.tensor([2.7, 4.5]))
    with pytest.raises(ValueError):
        HardConcreteGates([3], init_keep_probability=1.0)


def test_deterministic_values_in_unit_interval():
    gates = HardConcreteGates([7])
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([-20.0, -3.0, -1.0, 0.0, 1.0, 3.0, 20.0]))
    values = gates.deterministic()
    assert values.min() >= 0 and values.max() <= 1
    assert values[0] == 0.0 and values[-1] == 1.0
    assert torch.all(values[1:] >= values[:-1])  # monotone in log_alpha
    assert gates.decided_fraction() == pytest.approx(4 / 7)  # -20, -3, 3, 20


def test_l0_masks_gates_train_and_eval():
    config = tiny_config(heads_per_layer=[4, 2, 3], intermediate_sizes=[64, 10, 5])
    masks = L0Masks(config)
    masks.train()
    sampled = masks.gates()
    assert [g.shape for g in sampled.heads] == [(4,), (2,), (3,)]
    assert [g.shape for g in sampled.ffn] == [(64,), (10,), (5,)]
    assert all(g.dim() == 0 for g in sampled.layer)
    masks.eval()
    first, second = masks.gates(), masks.gates()
    assert all(torch.equal(a, b) for a, b in zip(first.ffn, second.ffn, strict=True))
    only_ffn = L0Masks(config, structures=("ffn",)).gates()
    assert only_ffn.layer is None and only_ffn.heads is None
    with pytest.raises(ValueError, match="unknown structures"):
        L0Masks(config, structures=("neurons",))


# --- expected size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [tiny_config(), tiny_config(heads_per_layer=[4, 0, 2], intermediate_sizes=[64, 7, 0]), bge_m3_config()],
    ids=["tiny", "uneven", "bge-m3"],
)
def test_expected_parameters_at_full_keep_equal_the_count(config):
    masks = L0Masks(config)
    with torch.no_grad():
        for group in masks.groups.values():
            group.log_alpha.fill_(40.0)
    expected = masks.expected_parameters()
    counts = count_parameters(config)
    assert expected["encoder"].item() == pytest.approx(counts.encoder, rel=1e-6)
    assert expected["total"].item() == pytest.approx(counts.total, rel=1e-6)


def test_expected_parameters_at_initialisation():
    config = tiny_config()
    masks = L0Masks(config, init_keep_probability=0.9)
    hidden, head = 32, 8
    per_layer = 6 * hidden + 0.9 * 4 * (4 * hidden * head + 3 * head) + 0.9 * 64 * (2 * hidden + 1)
    assert masks.expected_parameters()["encoder"].item() == pytest.approx(4 * 0.9 * per_layer, rel=1e-6)
    with_heads = masks.expected_parameters(output_head_parameters=1000, vocab_size=50)
    embeddings = (50 + 512 + 2) * hidden + 2 * hidden
    assert with_heads["total"].item() == pytest.approx(with_heads["encoder"].item() + embeddings + 1000, rel=1e-6)


def test_expected_parameters_are_differentiable():
    masks = L0Masks(tiny_config())
    set_log_alpha(masks, 0, scale=1.0)
    masks.expected_parameters()["encoder"].backward()
    for name, group in masks.groups.items():
        assert group.log_alpha.grad is not None, name
        assert (group.log_alpha.grad > 0).all(), name  # keeping more always costs more


# --- targets and the Lagrangian -----------------------------------------------------------------


def optimise(masks: L0Masks, target, steps: int = 300, warmup: int = 100, tail: int = 50) -> torch.Tensor:
    """The trainer's optimisers with nothing but the size term: gates hover around the target (no
    task loss holds them), so the last `tail` steps' gaps are returned, shape (tail, constraints)."""
    lagrangian = Lagrangian(target.constraint_names())
    gate_optimizer = torch.optim.AdamW(masks.parameters(), lr=0.1, weight_decay=0.0, betas=GATE_ADAM_BETAS)
    multiplier_optimizer = lagrangian.optimizer(0.1)
    recent = []
    for step in range(steps):
        gaps = target.gaps(masks, ramp=min(1.0, step / warmup))
        recent = [*recent[-(tail - 1):], gaps.detach()]
        loss = lagrangian(gaps)
        gate_optimizer.zero_grad()
        multiplier_optimizer.zero_grad()
        loss.backward()
        gate_optimizer.step()
        multiplier_optimizer.step()
    assert any(abs(v) > 0 for v in lagrangian.multipliers().values())
    return torch.stack(recent)


def test_lagrangian_drives_expected_size_to_a_parameter_budget():
    torch.manual_seed(0)
    config = tiny_config()
    full = count_parameters(config).encoder
    budget = ParameterBudget.from_fraction(config, 0.5)
    assert budget.parameters == round(full / 2)
    masks = L0Masks(config)
    start = masks.expected_parameters()["encoder"].item()
    assert start > 0.95 * full
    recent = optimise(masks, budget) * full / budget.parameters  # relative to the budget
    assert abs(recent.mean()) < 0.005
    assert recent.abs().max() < 0.05

    final = budget.final_masks(masks)
    size = count_parameters(config, final.kept_structure(config.vocab_size)).encoder
    assert budget.parameters - ffn_parameters_per_neuron(32) < size <= budget.parameters


def test_lagrangian_drives_expected_structure_to_an_architecture_target():
    torch.manual_seed(0)
    config = tiny_config()
    target = ArchitectureTarget(n_layers=2, n_heads=2, intermediate_size=24)
    target.validate(config, ("layers", "heads", "ffn"))
    masks = L0Masks(config)
    recent = optimise(masks, target)
    expected = masks.expected_structure()
    assert expected["layers"].item() == pytest.approx(2, abs=0.1)
    assert expected["heads"].mean().item() == pytest.approx(2, abs=0.1)
    assert expected["ffn"].mean().item() == pytest.approx(24, abs=1.0)
    assert recent.mean(0).abs().max() < 0.01


def test_linear_multiplier_integrates_only_near_the_target():
    lagrangian = Lagrangian(["a", "b"])
    with torch.no_grad():
        lagrangian.lambda_1.fill_(2.0)
        lagrangian.lambda_2.fill_(3.0)
    gaps = torch.tensor([INTEGRATION_BAND / 2, 4 * INTEGRATION_BAND], requires_grad=True)
    loss = lagrangian(gaps)
    assert loss.item() == pytest.approx(float((2 * gaps + 3 * gaps**2).sum()))
    loss.backward()
    assert lagrangian.lambda_1.grad.tolist() == pytest.approx([INTEGRATION_BAND / 2, 0.0])  # no wind-up far out
    assert lagrangian.lambda_2.grad.tolist() == pytest.approx((gaps.detach() ** 2).tolist())
    assert gaps.grad.tolist() == pytest.approx((2 + 6 * gaps.detach()).tolist())  # the gates feel both terms

    optimizer = lagrangian.optimizer(lr=1.0)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(lagrangian.lambda_1)] == pytest.approx(INTEGRAL_RATE * rates[id(lagrangian.lambda_2)])
    optimizer.step()
    assert (lagrangian.lambda_2 > 3.0).all()  # ascent: a gap only ever raises the quadratic weight
    # Outside the band lambda_1 only leaks toward 0: the decoupled decay, lr * rate * leak per step.
    assert lagrangian.lambda_1[1].item() == pytest.approx(2.0 * (1 - INTEGRAL_RATE * INTEGRAL_LEAK))


def test_gaps_follow_the_ramp():
    config = tiny_config()
    masks = L0Masks(config, init_keep_probability=0.95)
    full = count_parameters(config).encoder
    expected = masks.expected_parameters()["encoder"].item()
    budget = ParameterBudget.from_fraction(config, 0.4)
    # ramp 0: the target is still the full size, so the gap is only the (small) init shortfall.
    assert budget.gaps(masks, ramp=0.0).item() == pytest.approx((expected - full) / full, rel=1e-5)
    assert budget.gaps(masks, ramp=0.0).item() < 0
    assert budget.gaps(masks, ramp=0.5).item() == pytest.approx((expected - 0.7 * full) / full, rel=1e-4)
    assert budget.gaps(masks, ramp=1.0).item() == pytest.approx((expected - budget.parameters) / full, rel=1e-5)
    assert budget.gaps(masks, ramp=7.0).item() == budget.gaps(masks, ramp=1.0).item()  # clamped

    target = ArchitectureTarget(n_layers=2, n_heads=1, intermediate_size=16)
    assert torch.allclose(target.gaps(masks, ramp=0.0), torch.full((3,), -0.05), atol=1e-5)
    assert torch.allclose(
        target.gaps(masks, ramp=1.0),
        torch.tensor([(3.8 - 2) / 4, (3.8 - 1) / 4, (60.8 - 16) / 64]),
        atol=1e-5,
    )


def test_architecture_target_final_masks_keep_the_top_scores():
    config = tiny_config()
    masks = L0Masks(config)
    set_log_alpha(masks, 1)
    target = ArchitectureTarget(n_layers=3, n_heads=2, intermediate_size=20)
    final = target.final_masks(masks)
    scores = masks.scores()
    layer_scores = torch.cat(scores["layers"])
    assert final.layers.sum() == 3
    assert set(torch.nonzero(final.layers).flatten().tolist()) == set(torch.topk(layer_scores, 3).indices.tolist())
    for layer in range(4):
        assert final.heads[layer].sum() == 2
        assert set(torch.nonzero(final.heads[layer]).flatten().tolist()) == set(
            torch.topk(scores["heads"][layer], 2).indices.tolist()
        )
        assert final.ffn[layer].sum() == 20
        kept_scores = scores["ffn"][layer][final.ffn[layer]]
        dropped_scores = scores["ffn"][layer][~final.ffn[layer]]
        assert kept_scores.min() >= dropped_scores.max()
    structure = final.kept_structure(config.vocab_size)
    assert structure == target.structure(config)


def test_architecture_target_with_ungated_structures_keeps_them_whole():
    config = tiny_config()
    masks = L0Masks(config, structures=("ffn",))
    set_log_alpha(masks, 2)
    final = ArchitectureTarget(n_layers=4, n_heads=4, intermediate_size=10).final_masks(masks)
    assert final.layers.all() and all(h.all() for h in final.heads)
    assert [int(f.sum()) for f in final.ffn] == [10] * 4


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_parameter_budget_final_masks_fill_the_budget(seed, fraction):
    """Whatever the scores, the final size is at most the budget and less than one FFN neuron
    below it (heads and neurons gated, every layer kept)."""
    config = tiny_config(num_hidden_layers=3)
    masks = L0Masks(config, structures=("heads", "ffn"))
    set_log_alpha(masks, seed)
    budget = ParameterBudget.from_fraction(config, fraction)
    final = budget.final_masks(masks)
    size = count_parameters(config, final.kept_structure(config.vocab_size)).encoder
    assert size <= budget.parameters
    assert budget.parameters - size < ffn_parameters_per_neuron(config.hidden_size)


@pytest.mark.parametrize("seed", range(4))
def test_parameter_budget_adds_layers_when_undecided_gates_round_to_too_few(seed):
    """Layer gates all at a low keep probability round to no layer at all; the final masks still
    fill the budget, with the best-scored layers."""
    config = tiny_config(num_hidden_layers=4)
    masks = L0Masks(config)
    set_log_alpha(masks, seed)
    with torch.no_grad():
        masks.groups["layers"].log_alpha.copy_(torch.tensor([-4.0, -3.0, -5.0, -3.5]))
    assert round(float(masks.expected_structure()["layers"])) == 0
    budget = ParameterBudget.from_fraction(config, 0.45)
    final = budget.final_masks(masks)
    size = count_parameters(config, final.kept_structure(config.vocab_size)).encoder
    assert budget.parameters - ffn_parameters_per_neuron(config.hidden_size) < size <= budget.parameters
    assert final.layers[1] and final.layers[3]  # the two best-scored layers come first


def test_parameter_budget_prefers_higher_scores():
    config = tiny_config(num_hidden_layers=1)
    masks = L0Masks(config, structures=("ffn",))
    with torch.no_grad():
        masks.groups["ffn"].log_alpha.copy_(torch.linspace(-3, 3, 64))
    full = count_parameters(config).encoder
    budget = ParameterBudget(full - 10 * ffn_parameters_per_neuron(32))
    final = budget.final_masks(masks)
    assert final.ffn[0].tolist() == [False] * 10 + [True] * 54


def test_parameter_budget_total_scope():
    config = tiny_config()
    counts = count_parameters(config, None, 500)
    budget = ParameterBudget.from_fraction(config, 0.9, scope="total", output_head_parameters=500)
    assert budget.parameters == round(0.9 * counts.total)
    budget.validate(config, ("layers", "heads", "ffn"))
    assert budget.constraint_names() == ["total_parameters"]


def test_targets_beyond_the_model_raise_clear_errors():
    config = tiny_config()
    structures = ("layers", "heads", "ffn")
    with pytest.raises(TargetError, match=r"n_layers=5 but the model has 4"):
        ArchitectureTarget(5, 4, 64).validate(config, structures)
    with pytest.raises(TargetError, match=r"n_heads=6 but the model has 4"):
        ArchitectureTarget(4, 6, 64).validate(config, structures)
    with pytest.raises(TargetError, match=r"intermediate_size=65 but the model has 64"):
        ArchitectureTarget(4, 4, 65).validate(config, structures)
    with pytest.raises(TargetError, match="needs 'heads'"):
        ArchitectureTarget(4, 2, 64).validate(config, ("layers", "ffn"))
    full = count_parameters(config).encoder
    with pytest.raises(TargetError, match=f"{full:,}"):
        ParameterBudget(full + 1).validate(config, structures)
    with pytest.raises(TargetError, match="fraction"):
        ParameterBudget.from_fraction(config, 1.5)
    with pytest.raises(TargetError, match="scope"):
        ParameterBudget.from_fraction(config, 0.5, scope="embeddings")
    with pytest.raises(TargetError, match="at least one structure"):
        ParameterBudget(full // 2).validate(config, ())
    ParameterBudget(full).validate(config, structures)  # the full size itself is allowed


def test_parameter_budget_floor_depends_on_the_pruned_structures():
    """Without layer gates every layer's biases and LayerNorms stay; without head gates every head
    stays: a budget below that cannot be met and must be refused up front."""
    config = tiny_config()
    hidden, head = 32, 8
    fixed = 4 * 6 * hidden
    heads = 4 * 4 * (4 * hidden * head + 3 * head)
    ParameterBudget(0).validate(config, ("layers",))
    ParameterBudget(fixed).validate(config, ("heads", "ffn"))
    with pytest.raises(TargetError, match=f"{fixed:,} \\(every head and FFN neuron removed\\)"):
        ParameterBudget(fixed - 1).validate(config, ("heads", "ffn"))
    ParameterBudget(fixed + heads).validate(config, ("ffn",))
    with pytest.raises(TargetError, match=f"{fixed + heads:,} \\(every FFN neuron removed\\)"):
        ParameterBudget(5000).validate(config, ("ffn",))
    # A budget that passes validation is met by the final masks.
    budget = ParameterBudget(fixed + heads + 1000)
    budget.validate(config, ("ffn",))
    masks = L0Masks(config, structures=("ffn",))
    size = count_parameters(config, budget.final_masks(masks).kept_structure(100)).encoder
    assert budget.parameters - ffn_parameters_per_neuron(hidden) < size <= budget.parameters
    # Total scope: the embeddings always stay.
    embeddings = count_parameters(config).embeddings
    with pytest.raises(TargetError, match=f"{embeddings:,} \\(every layer removed\\)"):
        ParameterBudget(embeddings - 1, scope="total").validate(config, ("layers", "heads", "ffn"))


def test_structure_masks_round_trip_and_gates():
    masks = StructureMasks(
        layers=torch.tensor([True, False]),
        heads=[torch.tensor([True, False, True]), torch.tensor([False, False, False])],
        ffn=[torch.tensor([True, True]), torch.tensor([False, True])],
    )
    again = StructureMasks.from_dict(masks.as_dict())
    assert again.as_dict() == masks.as_dict()
    assert masks.kept_structure(7).heads_per_layer == (2,)
    assert masks.kept_structure(7).intermediate_sizes == (2,)
    gates = masks.as_gates()
    assert [float(g) for g in gates.layer] == [1.0, 0.0]
    assert gates.heads[0].tolist() == [1.0, 0.0, 1.0]


def test_aligned_final_masks_keep_multiples_within_the_budget():
    """FFN widths rounded to multiples of 16 per layer, chosen by gate score, the size still the
    largest not above the budget within one block of neurons."""
    from prune_engine.targets import Alignment

    config = tiny_config(intermediate_size=64, num_hidden_layers=4)
    masks = L0Masks(config, ("heads", "ffn"))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for group in masks.groups.values():
            group.log_alpha.copy_(torch.randn(group.log_alpha.shape, generator=generator))
    budget = ParameterBudget.from_fraction(config, 0.55)
    plain = budget.final_masks(masks)
    aligned = budget.final_masks(masks, Alignment(ffn=16))
    neuron = ffn_parameters_per_neuron(config.hidden_size)
    sizes = {name: count_parameters(config, m.kept_structure(config.vocab_size)).encoder
             for name, m in (("plain", plain), ("aligned", aligned))}
    assert all(int(f.sum()) % 16 == 0 for f in aligned.ffn)
    assert any(int(f.sum()) % 16 for f in plain.ffn)  # the rounding did something
    assert budget.parameters - 16 * neuron < sizes["aligned"] <= budget.parameters
    # The best-scored neurons of each layer are the ones kept.
    for kept, scores in zip(aligned.ffn, masks.scores()["ffn"], strict=True):
        if 0 < int(kept.sum()) < len(kept):
            assert float(scores[kept].min()) >= float(scores[~kept].max())


def test_a_latency_target_drives_the_expected_time_and_fits_its_budget():
    from prune_engine.accounting import Structure
    from prune_engine.latency import Conditions, LatencyModel
    from prune_engine.targets import LatencyTarget

    config = tiny_config()
    conditions = Conditions(8, 16, "cpu", "float32", 1, torch.__version__, "test", "cpu")
    model = LatencyModel(base=1e-3, layer_fixed=2e-3, per_head=1e-3, per_neuron=2e-5, hidden_size=config.hidden_size,
                         attention_head_size=config.attention_head_size, full_structure=Structure.of(config),
                         conditions=conditions)
    target = LatencyTarget.for_model(model, config, ("heads", "ffn"), speedup=2.0)
    assert target.seconds == pytest.approx(model.full_latency / 2)
    masks = L0Masks(config, ("heads", "ffn"))
    gap = target.gaps(masks, ramp=1.0)
    assert float(gap) > 0.4  # gates near 1: about the full time, twice the target
    gap.sum().backward()
    assert all(float(g.log_alpha.grad.min()) > 0 for g in masks.groups.values())
    final = target.final_masks(masks)
    seconds = model.predict(final.kept_structure(config.vocab_size))
    assert target.seconds - model.per_neuron - 1e-12 <= seconds <= target.seconds + 1e-12
    with pytest.raises(TargetError, match="target_speedup 50 is beyond what pruning"):
        LatencyTarget.for_model(model, config, ("heads", "ffn"), speedup=50.0)
