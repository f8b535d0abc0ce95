"""Latency as a linear cost of the kept structure, with coefficients timed on this machine.

A BERT layer's forward time is, to first order, linear in its kept heads and FFN neurons, as its
parameter count is (`accounting.layer_parameters`). At one batch size and sequence length:

    seconds per batch = base + sum over kept layers of (layer_fixed + per_head * heads + per_neuron * neurons)

`base` is the encoder's forward with no layer: embedding lookups, their LayerNorm and the attention
mask. Tokenization and pooling are left out: pruning changes neither, and the tokenizer's cost
depends on the text, not on the model. `layer_seconds` is the one formula; it works on ints (a
structure's predicted time) and on tensors (the differentiable expected time of L0 gates), so what
a latency target drives and what is predicted for the export are the same arithmetic.

`calibrate` times random-weight models of the config's exact shape (a few structures chosen to
separate the four coefficients), fits them by non-negative least squares on relative error, and
reports predicted against measured time on held-out random uneven structures.

Example:
    >>> model = calibrate(config, batch_size=32, sequence_length=128)  # doctest: +SKIP
    >>> model.speedup(Structure((12, 6, 3), (1536, 768, 384), config.vocab_size))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from .accounting import Structure
from .l0 import STRUCTURES
from .modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel

# Rounds when `repeats` is not given: as many as fit TIME_BUDGET_S after the warm-up round, within
# these bounds, so a BGE-M3-shaped calibration (24x MiniLM's work per layer) takes fewer rounds.
# With 3 rounds on a loaded 2-core box (load 5) held-out errors reached 68%; with 7, 8%.
MIN_ROUNDS, MAX_ROUNDS = 5, 15
TIME_BUDGET_S = 25.0
# "wall": elapsed time, what a user waits. "cpu": the process's CPU time, which for one thread on
# CPU is the time the forward takes on an otherwise idle core: on a shared box, where wall time
# swings 1.5-2x with the other jobs, it is stable to a few percent.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Conditions:
    """What the coefficients hold for: another batch, length, device, dtype or thread count needs
    its own calibration. `clock` says whether they are wall or CPU seconds (see CLOCKS)."""

    batch_size: int
    sequence_length: int
    device: str
    dtype: str
    threads: int
    torch_version: str
    machine: str
    clock: str = "wall"


@dataclass(frozen=True)
class Measurement:
    """One timed structure: median seconds per batch measured, and what the fitted model predicts."""

    structure: Structure
    measured: float
    predicted: float

    @property
    def relative_error(self) -> float:
        return abs(self.predicted - self.measured) / self.measured


@dataclass(frozen=True)
class FitReport:
    """The calibration's own structures, held-out random structures (the honest error), the rounds
    each was timed and the 1-minute load average before and after (a shared box shows here)."""

    calibration: tuple[Measurement, ...]
    held_out: tuple[Measurement, ...]
    rounds: int
    load_average: tuple[float, float]
    wall_seconds: float

    @property
    def mean_relative_error(self) -> float:
        return statistics.fmean(m.relative_error for m in self.held_out)

    @property
    def max_relative_error(self) -> float:
        return max(m.relative_error for m in self.held_out)


@dataclass(frozen=True)
class LatencyModel:
    """Seconds per batch of the encoder forward (no tokenizer, no pooling) under `conditions`."""

    base: float
    layer_fixed: float
    per_head: float
    per_neuron: float
    hidden_size: int
    attention_head_size: int
    full_structure: Structure  # the unpruned model, for speedups
    conditions: Conditions
    fit: FitReport | None = None
    # The unpruned model's time measured in the calibration: speedups are against it, not against
    # the linear form extrapolated to the full depth (10% off on MiniLM: 1.33 s against 1.19 s).
    full_measured: float | None = None

    def layer_seconds(self, n_heads, n_neurons):
        """One kept layer's time; `n_heads` / `n_neurons` may be ints or (expected) tensors."""
        return self.layer_fixed + self.per_head * n_heads + self.per_neuron * n_neurons

    def predict(self, structure: Structure) -> float:
        """Seconds per batch of a (pruned) structure of the calibrated model."""
        most_heads = max(self.full_structure.heads_per_layer, default=0)
        if any(h > most_heads for h in structure.heads_per_layer):
            raise ValueError(
                f"structure has {max(structure.heads_per_layer)} heads in a layer, the calibrated model at most "
                f"{most_heads}: calibrate on this model's config"
            )
        layers = zip(structure.heads_per_layer, structure.intermediate_sizes, strict=True)
        return self.base + sum(self.layer_seconds(h, f) for h, f in layers)

    def expected(self, layer_keep: torch.Tensor, heads: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """Differentiable expected seconds per batch from `L0Masks.expected_structure()`: per layer
        P(kept) (n_layers,), expected heads (n_layers,) and expected neurons (n_layers,). Gates are
        independent, so each layer's expected time is P(kept) x its time at the expected counts."""
        return self.base + (layer_keep * self.layer_seconds(heads, neurons)).sum()

    @property
    def full_latency(self) -> float:
        """The unpruned model's seconds per batch: measured when calibrated, else predicted."""
        return self.full_measured if self.full_measured is not None else self.predict(self.full_structure)

    def speedup(self, structure: Structure) -> float:
        """Predicted time of the full model over that of `structure`."""
        return self.full_latency / self.predict(structure)

    def check_config(self, config: PrunableEncoderConfig) -> None:
        """Coefficients are per head and neuron of one width: another hidden or head size needs its own."""
        calibrated = (self.hidden_size, self.attention_head_size)
        if (config.hidden_size, config.attention_head_size) != calibrated:
            raise ValueError(
                f"this latency model was calibrated for hidden size {self.hidden_size} and head size "
                f"{self.attention_head_size}, the config has {config.hidden_size} and {config.attention_head_size}: "
                "run latency.calibrate on this config"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyModel:
        missing = {"base", "layer_fixed", "per_head", "per_neuron", "hidden_size", "attention_head_size",
                   "full_structure", "conditions"} - set(data)
        if missing:
            raise ValueError(f"not a latency model: missing {sorted(missing)}; write one with LatencyModel.save")
        fit = data.get("fit")
        return cls(
            **{key: data[key] for key in ("base", "layer_fixed", "per_head", "per_neuron")},
            hidden_size=int(data["hidden_size"]),
            attention_head_size=int(data["attention_head_size"]),
            full_structure=_structure_from_dict(data["full_structure"]),
            conditions=Conditions(**data["conditions"]),
            fit=None if fit is None else _fit_report_from_dict(fit),
            full_measured=data.get("full_measured"),
        )

    def save(self, path: str | Path) -> None:
        """Written atomically (temporary file, then rename)."""
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _structure_from_dict(data: dict) -> Structure:
    return Structure(tuple(data["heads_per_layer"]), tuple(data["intermediate_sizes"]), int(data["vocab_size"]))


def _fit_report_from_dict(data: dict) -> FitReport:
    def measurements(rows: list[dict]) -> tuple[Measurement, ...]:
        return tuple(Measurement(_structure_from_dict(r["structure"]), r["measured"], r["predicted"]) for r in rows)

    return FitReport(
        calibration=measurements(data["calibration"]),
        held_out=measurements(data["held_out"]),
        rounds=int(data["rounds"]),
        load_average=tuple(data["load_average"]),
        wall_seconds=data["wall_seconds"],
    )


# --------------------------------------------------------------------------- fitting


def cost_features(structure: Structure) -> tuple[int, int, int, int]:
    """The linear form's inputs: (1 for base, kept layers, total heads, total neurons)."""
    return 1, structure.num_layers, sum(structure.heads_per_layer), sum(structure.intermediate_sizes)


def fit_coefficients(structures: list[Structure], seconds: list[float]) -> tuple[float, float, float, float]:
    """(base, layer_fixed, per_head, per_neuron) >= 0 minimising the squared relative error: each
    row divided by its measured time, so the fast base-only structure weighs as much as the full one."""
    if len(structures) != len(seconds) or len(structures) < 4:
        raise ValueError("fitting four coefficients needs at least four timed structures, one time each")
    if min(seconds) <= 0:
        raise ValueError(f"measured times must be positive, got {min(seconds)}")
    design = np.array([cost_features(s) for s in structures], dtype=np.float64)
    measured = np.array(seconds, dtype=np.float64)
    coefficients, _ = nnls(design / measured[:, None], np.ones_like(measured))
    return tuple(float(c) for c in coefficients)


def calibration_structures(config: PrunableEncoderConfig) -> list[Structure]:
    """Structures that separate the coefficients: no layer (base), one and two full layers, one
    layer narrow in heads and one narrow in neurons (per head vs per neuron), two half-width and two
    very narrow layers (the fixed cost per layer, and widths a pruned model really has)."""
    heads, neurons = max(config.heads_per_layer), max(config.intermediate_sizes)
    layers = [
        (),
        ((heads, neurons),),
        ((heads, neurons),) * 2,
        ((heads, max(1, neurons // 4)),),
        ((max(1, heads // 4), neurons),),
        ((max(1, heads // 2), max(1, neurons // 2)),) * 2,
        ((max(1, heads // 4), max(1, neurons // 8)),) * 2,
    ]
    return [Structure(tuple(h for h, _ in s), tuple(f for _, f in s), config.vocab_size) for s in layers]


def held_out_structures(config: PrunableEncoderConfig, count: int, seed: int) -> list[Structure]:
    """Random uneven structures: 1..n kept layers, each with its own head count and FFN width."""
    generator = torch.Generator().manual_seed(seed + 1)
    heads, neurons = max(config.heads_per_layer), max(config.intermediate_sizes)
    structures = []
    for _ in range(count):
        n_layers = int(torch.randint(1, config.num_hidden_layers + 1, (1,), generator=generator))
        layer_heads = torch.randint(1, heads + 1, (n_layers,), generator=generator).tolist()
        layer_neurons = torch.randint(1, neurons + 1, (n_layers,), generator=generator).tolist()
        structures.append(Structure(tuple(layer_heads), tuple(layer_neurons), config.vocab_size))
    return structures


# --------------------------------------------------------------------------- timing


def _check_calibration_inputs(config, batch_size: int, sequence_length: int, device: torch.device) -> None:
    if max(config.heads_per_layer, default=0) < 1 or max(config.intermediate_sizes, default=0) < 1:
        raise ValueError("the config has no layer with a head and an FFN neuron: nothing to calibrate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    offset = config.pad_token_id + 1 if config.position_ids_from_padding else 0
    longest = config.max_position_embeddings - offset
    if not 1 <= sequence_length <= longest:
        raise ValueError(f"sequence_length must be in 1..{longest} (the model's position embeddings), got {sequence_length}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device: calibrate with device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device}")


def _check_clock(clock: str, device: torch.device) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(
            "clock='cpu' measures the process's CPU time, which is a forward's latency only on one CPU thread: "
            "call torch.set_num_threads(1) and use device='cpu', or use clock='wall'"
        )


def _timed_models(config, structures: list[Structure], device: torch.device, dtype: torch.dtype) -> list:
    """One random-weight model per structure, all sharing one embeddings module (BGE-M3's 256M-entry
    table once, not once per structure): the embeddings' time is the same in every structure."""
    shared = PrunableEncoderModel(_with_layers(config, (), ())).embeddings
    models = []
    for structure in structures:
        tiny_vocab = _with_layers(config, structure.heads_per_layer, structure.intermediate_sizes)
        tiny_vocab.vocab_size = config.pad_token_id + 1  # replaced by the shared embeddings below
        model = PrunableEncoderModel(tiny_vocab)
        model.embeddings = shared
        models.append(model.to(device=device, dtype=dtype).eval())
    return models


def _with_layers(config: PrunableEncoderConfig, heads: tuple[int, ...], neurons: tuple[int, ...]):
    shaped = copy.deepcopy(config)
    shaped.heads_per_layer, shaped.intermediate_sizes = list(heads), list(neurons)
    shaped.num_hidden_layers, shaped.intermediate_size = len(heads), max(neurons, default=0)
    return shaped


@torch.inference_mode()
def _forward_seconds(model: PrunableEncoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     clock: str) -> float:
    synchronize = torch.cuda.synchronize if input_ids.device.type == "cuda" else (lambda: None)
    now = CLOCKS[clock]
    synchronize()
    start = now()
    model(input_ids=input_ids, attention_mask=attention_mask)
    synchronize()
    return now() - start


def random_tokens(vocab_size: int, pad_token_id: int, batch_size: int, sequence_length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids of anything but padding, so every position is a real token."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size - 1, (batch_size, sequence_length), generator=generator)
    return input_ids + (input_ids >= pad_token_id).long()


def measured_against_prediction(model: LatencyModel, original, pruned, vocab_size: int, pad_token_id: int) -> dict:
    """The pruned encoder timed beside the original at the model's conditions, against what the
    model predicts for its structure: the check a latency target is judged by."""
    c = model.conditions
    input_ids = random_tokens(vocab_size, pad_token_id, c.batch_size, c.sequence_length).to(c.device)
    (original_s, pruned_s), rounds = time_interleaved([original, pruned], input_ids, None, c.clock)
    predicted = model.predict(Structure.of(pruned.config))
    return {"predicted_s": predicted, "measured_s": pruned_s, "original_measured_s": original_s,
            "predicted_speedup": model.full_latency / predicted, "measured_speedup": original_s / pruned_s,
            "rounds": rounds, "conditions": asdict(c)}


def time_interleaved(models: list, input_ids: torch.Tensor, repeats: int | None,
                     clock: str = "wall") -> tuple[list[float], int]:
    """Median seconds per forward of each model over interleaved rounds (one of each per round, in
    rotating order, so load that changes during the run slows every model alike), after one warm-up
    round. `repeats=None` fits as many rounds as TIME_BUDGET_S (wall clock) allows, MIN_ROUNDS..MAX_ROUNDS."""
    attention_mask = torch.ones_like(input_ids)
    started = time.perf_counter()
    for model in models:
        _forward_seconds(model, input_ids, attention_mask, clock)
    warm_up = time.perf_counter() - started
    rounds = repeats or min(MAX_ROUNDS, max(MIN_ROUNDS, int(TIME_BUDGET_S / warm_up)))
    times: list[list[float]] = [[] for _ in models]
    for round_index in range(rounds):
        shift = round_index % len(models)
        for index in list(range(shift, len(models))) + list(range(shift)):
            times[index].append(_forward_seconds(models[index], input_ids, attention_mask, clock))
    return [statistics.median(t) for t in times], rounds


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def calibrate(
    config: PrunableEncoderConfig,
    batch_size: int,
    sequence_length: int,
    device: str = "cpu",
    repeats: int | None = None,
    seed: int = 0,
    held_out: int = 3,
    dtype: torch.dtype = torch.float32,
    clock: str = "wall",
) -> LatencyModel:
    """Times the calibration and `held_out` random structures of `config`'s shape on random token
    ids at full length (no padding), fits the coefficients on the former and reports the error on
    the latter. Uses torch's current thread count: set it first (`torch.set_num_threads`). `clock`
    is "wall" or "cpu" (see CLOCKS; one CPU thread only)."""
    target = torch.device(device)
    _check_calibration_inputs(config, batch_size, sequence_length, target)
    _check_clock(clock, target)
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be at least 1 (or None to fit the time budget), got {repeats}")
    if held_out < 1:
        raise ValueError(f"held_out must be at least 1: the fit report's error is measured on them, got {held_out}")
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    torch.manual_seed(seed)
    full = Structure.of(config)
    fitted_on = calibration_structures(config) + [full]  # last: the reference every speedup is against
    checked_on = held_out_structures(config, held_out, seed)
    models = _timed_models(config, fitted_on + checked_on, target, dtype)
    input_ids = random_tokens(config.vocab_size, config.pad_token_id, batch_size, sequence_length, seed).to(target)
    seconds, rounds = time_interleaved(models, input_ids, repeats, clock)
    base, layer_fixed, per_head, per_neuron = fit_coefficients(fitted_on, seconds[: len(fitted_on)])
    conditions = Conditions(batch_size, sequence_length, target.type, str(dtype).removeprefix("torch."),
                            torch.get_num_threads(), torch.__version__, machine_description(target), clock)
    model = LatencyModel(base, layer_fixed, per_head, per_neuron, config.hidden_size, config.attention_head_size,
                         full, conditions, full_measured=seconds[len(fitted_on) - 1])
    measured = [Measurement(s, t, model.predict(s)) for s, t in zip(fitted_on + checked_on, seconds, strict=True)]
    report = FitReport(tuple(measured[: len(fitted_on)]), tuple(measured[len(fitted_on):]), rounds,
                       (load_before, os.getloadavg()[0]), time.perf_counter() - started)
    return replace(model, fit=report)


# --------------------------------------------------------------------------- targets


def latency_budget(
    model: LatencyModel,
    config: PrunableEncoderConfig,
    target_speedup: float | None = None,
    target_latency: float | None = None,
    structures: tuple[str, ...] = STRUCTURES,
) -> float:
    """Seconds per batch a pruned `config` may take: `target_latency` itself, or the full model's
    predicted time over `target_speedup`. Refused when pruning `structures` cannot reach it."""
    if (target_speedup is None) == (target_latency is None):
        raise ValueError("give exactly one of target_speedup and target_latency")
    model.check_config(config)
    full = model.full_latency if Structure.of(config) == model.full_structure else model.predict(Structure.of(config))
    if "layers" in structures:
        floor, removed = model.base, "every layer removed"
    else:  # every layer stays: only the gated heads / neurons can go
        floor = model.predict(Structure(
            tuple(0 if "heads" in structures else h for h in config.heads_per_layer),
            tuple(0 if "ffn" in structures else f for f in config.intermediate_sizes),
            config.vocab_size,
        ))
        units = {"heads": "head", "ffn": "FFN neuron"}
        removed = "every " + " and ".join(units[s] for s in units if s in structures) + " removed"
    if target_speedup is not None:
        if target_speedup <= 1.0:
            raise ValueError(f"target_speedup must be above 1 (1 is the unpruned model), got {target_speedup}")
        if target_speedup > full / floor:
            raise ValueError(
                f"target_speedup {target_speedup:g} is beyond what pruning {', '.join(structures)} reaches: at most "
                f"{full / floor:.2f}x ({removed}) at batch {model.conditions.batch_size} x {model.conditions.sequence_length}"
            )
        return full / target_speedup
    if not floor <= target_latency < full:
        raise ValueError(
            f"target_latency {target_latency * 1000:.2f} ms is outside what pruning {', '.join(structures)} reaches: "
            f"{floor * 1000:.2f} ms ({removed}) up to {full * 1000:.2f} ms (the unpruned model) per batch of "
            f"{model.conditions.batch_size} x {model.conditions.sequence_length}"
        )
    return float(target_latency)
