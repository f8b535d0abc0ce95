"""The latency cost model: its arithmetic, its fit, its JSON form, calibration on real shapes and
latency targets. Timing accuracy is measured in benchmarks/latency_model.py, not asserted here."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_hf_config

from prune_engine import latency
from prune_engine.accounting import Structure
from prune_engine.l0 import L0Masks
from prune_engine.latency import (
    Conditions,
    LatencyModel,
    calibrate,
    calibration_structures,
    cost_features,
    fit_coefficients,
    held_out_structures,
    latency_budget,
)
from prune_engine.modeling_prunable_encoder import PrunableEncoderConfig
from prune_engine.sources import encoder_config_from_hf, read_encoder_config

BASE, LAYER_FIXED, PER_HEAD, PER_NEURON = 0.002, 0.004, 0.0125, 0.00015


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def uneven_config() -> PrunableEncoderConfig:
    return PrunableEncoderConfig(
        vocab_size=100, hidden_size=32, num_attention_heads=4, heads_per_layer=[4, 2, 4, 1],
        intermediate_sizes=[64, 64, 10, 30], max_position_embeddings=24,
    )


def hand_model(config: PrunableEncoderConfig) -> LatencyModel:
    conditions = Conditions(32, 128, "cpu", "float32", 1, torch.__version__, "test")
    return LatencyModel(BASE, LAYER_FIXED, PER_HEAD, PER_NEURON, config.hidden_size, config.attention_head_size,
                        Structure.of(config), conditions)


def test_predict_is_the_linear_form():
    config = PrunableEncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                                   intermediate_size=64)
    model = hand_model(config)
    full = BASE + 6 * (LAYER_FIXED + 4 * PER_HEAD + 64 * PER_NEURON)
    assert model.predict(Structure.of(config)) == pytest.approx(full, rel=1e-12)
    assert model.full_latency == pytest.approx(full, rel=1e-12)
    uneven = Structure((4, 0, 1), (3, 64, 0), 100)
    expected = BASE + 3 * LAYER_FIXED + 5 * PER_HEAD + 67 * PER_NEURON
    assert model.predict(uneven) == pytest.approx(expected, rel=1e-12)
    assert model.predict(Structure((), (), 100)) == BASE
    assert model.speedup(uneven) == pytest.approx(full / expected, rel=1e-12)
    assert model.speedup(Structure.of(config)) == pytest.approx(1.0)


def test_predict_refuses_more_heads_than_calibrated():
    model = hand_model(uneven_config())
    with pytest.raises(ValueError, match="5 heads in a layer, the calibrated model at most 4"):
        model.predict(Structure((5,), (10,), 100))


def test_expected_equals_predict_on_binary_gates_and_has_gradients():
    config = uneven_config()
    model = hand_model(config)
    layer_keep = torch.tensor([1.0, 0.0, 1.0, 1.0], requires_grad=True)
    heads = torch.tensor(config.heads_per_layer, dtype=torch.float32, requires_grad=True)
    neurons = torch.tensor(config.intermediate_sizes, dtype=torch.float32, requires_grad=True)
    expected = model.expected(layer_keep, heads, neurons)
    kept = Structure((4, 4, 1), (64, 10, 30), config.vocab_size)
    assert float(expected.detach()) == pytest.approx(model.predict(kept), rel=1e-6)
    expected.backward()
    assert torch.allclose(heads.grad, PER_HEAD * layer_keep.detach())
    assert torch.allclose(neurons.grad, PER_NEURON * layer_keep.detach())
    per_layer = [model.layer_seconds(h, f) for h, f in zip(config.heads_per_layer, config.intermediate_sizes, strict=True)]
    assert torch.allclose(layer_keep.grad, torch.tensor(per_layer))


def test_expected_latency_of_l0_gates_pushes_every_gate():
    """What a latency target will drive: each gate's logit raises the expected time."""
    config = uneven_config()
    masks = L0Masks(config)
    structure = masks.expected_structure()
    seconds = hand_model(config).expected(structure["layer_keep"], structure["heads"], structure["ffn"])
    assert float(seconds.detach()) < hand_model(config).full_latency  # every gate starts at P(kept) = 0.99
    seconds.backward()
    for name, group in masks.groups.items():
        assert (group.log_alpha.grad > 0).all(), name


def test_fit_recovers_known_coefficients_and_clamps_negative_ones():
    config = read_encoder_config("minilm")
    structures = calibration_structures(config)
    assert structures[0] == Structure((), (), config.vocab_size)
    truth = (BASE, LAYER_FIXED, PER_HEAD, PER_NEURON)
    seconds = [sum(c * x for c, x in zip(truth, cost_features(s), strict=True)) for s in structures]
    assert fit_coefficients(structures, seconds) == pytest.approx(truth, rel=1e-9)
    # A per-layer saving (negative fixed cost) cannot be a cost: it is clamped to 0, the rest refit.
    saving = (BASE, -0.001, PER_HEAD, PER_NEURON)
    seconds = [sum(c * x for c, x in zip(saving, cost_features(s), strict=True)) for s in structures]
    fitted = fit_coefficients(structures, seconds)
    assert fitted[1] == 0.0 and min(fitted) >= 0.0 and fitted[2] > 0 and fitted[3] > 0
    with pytest.raises(ValueError, match="at least four timed structures"):
        fit_coefficients(structures[:3], seconds[:3])


def test_held_out_structures_are_uneven_and_within_the_model():
    config = read_encoder_config("minilm")
    structures = held_out_structures(config, 5, seed=0)
    assert structures == held_out_structures(config, 5, seed=0)
    for structure in structures:
        assert 1 <= structure.num_layers <= 6
        assert all(1 <= h <= 12 for h in structure.heads_per_layer)
        assert all(1 <= f <= 1536 for f in structure.intermediate_sizes)
    assert any(len(set(s.heads_per_layer)) > 1 for s in structures)


def check_calibrated(model: LatencyModel, config: PrunableEncoderConfig, batch: int, length: int, rounds: int,
                     clock: str = "wall", widths_cost_time: bool = True):
    assert min(model.base, model.layer_fixed, model.per_head, model.per_neuron) >= 0.0
    if widths_cost_time:
        assert model.per_head > 0 or model.per_neuron > 0
    assert model.full_structure == Structure.of(config)
    assert (model.hidden_size, model.attention_head_size) == (config.hidden_size, config.attention_head_size)
    conditions = model.conditions
    assert (conditions.batch_size, conditions.sequence_length, conditions.device) == (batch, length, "cpu")
    assert (conditions.threads, conditions.torch_version, conditions.dtype) == (1, torch.__version__, "float32")
    assert conditions.clock == clock
    report = model.fit
    assert report.rounds == rounds and len(report.calibration) == 8
    # The unpruned model is timed too: speedups are against its measured time, not an extrapolation.
    assert report.calibration[-1].structure == model.full_structure
    assert model.full_latency == model.full_measured == report.calibration[-1].measured
    for measurement in report.calibration + report.held_out:
        assert measurement.measured > 0
        assert measurement.predicted == pytest.approx(model.predict(measurement.structure))
    assert 0 <= report.mean_relative_error <= report.max_relative_error


def test_calibrate_on_the_real_minilm_shape():
    config = read_encoder_config("minilm")
    model = calibrate(config, batch_size=2, sequence_length=16, repeats=2, held_out=2)
    check_calibrated(model, config, 2, 16, rounds=2)
    assert len(model.fit.held_out) == 2


def test_calibrate_on_an_xlmr_shape_at_its_longest_sequence_in_cpu_time():
    """BGE-M3's kind: positions counted from padding + 1, so 2 of the 40 positions are unusable.
    A head here is 12 wide and the FFN 80: their cost is below a loaded machine's noise and may fit
    to 0 (CI saw it), so only the real MiniLM shape above must show it."""
    config = encoder_config_from_hf(tiny_hf_config("xlm-roberta").to_dict())
    model = calibrate(config, batch_size=3, sequence_length=38, repeats=3, held_out=1, clock="cpu")
    check_calibrated(model, config, 3, 38, rounds=3, clock="cpu", widths_cost_time=False)


def test_cpu_clock_needs_one_thread():
    config = encoder_config_from_hf(tiny_hf_config("xlm-roberta").to_dict())
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match=r"only on one CPU thread: call torch.set_num_threads\(1\)"):
        calibrate(config, batch_size=1, sequence_length=8, clock="cpu")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(batch_size=0, sequence_length=8), "batch_size must be at least 1"),
        (dict(batch_size=1, sequence_length=39), r"sequence_length must be in 1\.\.38"),
        (dict(batch_size=1, sequence_length=8, device="meta"), "device must be 'cpu' or 'cuda'"),
        (dict(batch_size=1, sequence_length=8, repeats=0), "repeats must be at least 1"),
        (dict(batch_size=1, sequence_length=8, held_out=0), "held_out must be at least 1"),
        (dict(batch_size=1, sequence_length=8, clock="gpu"), r"clock must be one of \['cpu', 'wall'\]"),
    ],
)
def test_calibrate_refuses_bad_input_before_building_models(monkeypatch, arguments, message):
    monkeypatch.setattr(latency, "_timed_models", lambda *a: pytest.fail("built models for bad input"))
    config = encoder_config_from_hf(tiny_hf_config("xlm-roberta").to_dict())
    with pytest.raises(ValueError, match=message):
        calibrate(config, **arguments)


def test_json_round_trip(tmp_path):
    config = read_encoder_config("minilm")
    model = calibrate(config, batch_size=1, sequence_length=8, repeats=2, held_out=2)
    path = tmp_path / "latency.json"
    model.save(path)
    assert LatencyModel.load(path) == model
    assert json.loads(path.read_text())["conditions"]["batch_size"] == 1
    assert not (tmp_path / "latency.json.tmp").exists()
    assert LatencyModel.from_dict(hand_model(config).to_dict()) == hand_model(config)
    older = LatencyModel.from_dict({k: v for k, v in model.to_dict().items() if k != "full_measured"})
    assert older.full_latency == pytest.approx(older.predict(older.full_structure))  # a file from before it
    with pytest.raises(ValueError, match=r"missing \['per_neuron'\]"):
        LatencyModel.from_dict({k: v for k, v in model.to_dict().items() if k != "per_neuron"})


def test_latency_budget_from_a_speedup_or_a_latency():
    config = uneven_config()
    model = hand_model(config)
    full = model.full_latency
    assert latency_budget(model, config, target_speedup=2.0) == pytest.approx(full / 2)
    assert latency_budget(model, config, target_latency=full / 3) == pytest.approx(full / 3)
    assert latency_budget(model, config, target_speedup=full / BASE) == pytest.approx(BASE)


def test_latency_budget_refuses_what_pruning_cannot_reach():
    config = uneven_config()
    model = hand_model(config)
    full = model.full_latency
    with pytest.raises(ValueError, match="must be above 1"):
        latency_budget(model, config, target_speedup=1.0)
    with pytest.raises(ValueError, match=rf"at most {full / BASE:.2f}x \(every layer removed\)"):
        latency_budget(model, config, target_speedup=full / BASE * 1.01)
    with pytest.raises(ValueError, match="outside what pruning"):
        latency_budget(model, config, target_latency=BASE * 0.99)
    with pytest.raises(ValueError, match="up to .* ms \\(the unpruned model\\)"):
        latency_budget(model, config, target_latency=full)
    with pytest.raises(ValueError, match="exactly one"):
        latency_budget(model, config, target_speedup=2.0, target_latency=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        latency_budget(model, config)


def test_latency_budget_without_layer_pruning_stops_at_the_layers_fixed_cost():
    config = uneven_config()
    model = hand_model(config)
    floor = BASE + 4 * LAYER_FIXED + 64 * PER_NEURON + 64 * PER_NEURON + 10 * PER_NEURON + 30 * PER_NEURON
    reachable = model.full_latency / floor
    budget = latency_budget(model, config, target_speedup=reachable * (1 - 1e-9), structures=("heads",))
    assert budget == pytest.approx(floor)
    with pytest.raises(ValueError, match=r"\(every head removed\)"):
        latency_budget(model, config, target_speedup=reachable * 1.01, structures=("heads",))
    with pytest.raises(ValueError, match=r"every head and FFN neuron removed"):
        latency_budget(model, config, target_latency=BASE * 2, structures=("heads", "ffn"))


def test_latency_budget_refuses_another_models_config():
    model = hand_model(uneven_config())
    other = PrunableEncoderConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ValueError, match="calibrated for hidden size 32 and head size 8"):
        latency_budget(model, other, target_speedup=2.0)


@pytest.mark.parametrize(("per_head", "per_neuron"), [(PER_HEAD, 0.0), (0.0, 0.0)])
def test_a_latency_target_plans_a_structure_when_the_fit_prices_units_at_zero(per_head, per_neuron):
    """A tiny model's neurons can be too cheap to time: the fit gives them cost 0, and they are
    all kept (a CI machine once stopped here on a division by zero)."""
    from prune_engine.targets import LatencyTarget

    config = PrunableEncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=64)
    conditions = Conditions(32, 128, "cpu", "float32", 1, torch.__version__, "test")
    model = LatencyModel(BASE, LAYER_FIXED, per_head, per_neuron, 32, 8, Structure.of(config), conditions)
    half_the_heads = BASE + 4 * (LAYER_FIXED + 2 * per_head)
    structure, _ = LatencyTarget(model, half_the_heads).planned_structure(config)
    assert structure.intermediate_sizes == (64,) * 4
    assert structure.heads_per_layer == ((2,) * 4 if per_head else (4,) * 4)
