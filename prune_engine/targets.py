"""Size targets, the Lagrangian that pulls the expected size to them, and the final top-k masks.

Three ways to state a target, one interface (validate, describe, the planned structure, the
encoder size along the ramp, the constraints and the final masks):
- `ArchitectureTarget`: the original design's `target_model: {n_layers, n_heads, intermediate_size}`,
  a uniform result. Three constraints (layers, heads per layer, neurons per layer) are enforced.
- `ParameterBudget`: a count of encoder or total parameters; the method allocates heads and
  neurons per layer freely. One constraint on the expected parameter count.
- `LatencyTarget`: seconds per batch on this machine, or a speedup over the unpruned model, from
  a cost model calibrated here (`latency.py`); like a budget, one constraint on the expected cost.
- `FixedStructure`: given masks (a run's final_masks.json); nothing to learn, no constraint.

Each constraint is a relative gap (expected - target) / full size, so one set of multiplier
learning rates works for MiniLM and BGE-M3 alike. The target is ramped linearly from the full
size over a warmup, as in CoFi / Sheared-LLaMA.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .accounting import (
    Structure,
    attention_parameters_per_head,
    count_parameters,
    ffn_parameters_per_neuron,
    layer_fixed_parameters,
)
from .l0 import L0Masks, StructureMasks
from .latency import LatencyModel, latency_budget
from .modeling_prunable_encoder import PrunableEncoderConfig


class TargetError(ValueError):
    """A target the model cannot reach; the message says what the model has."""


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(scores, min(k, scores.numel())).indices] = True
    return mask


def _all_kept(config: PrunableEncoderConfig) -> dict[str, list[torch.Tensor]]:
    return {
        "layers": [torch.ones(1) for _ in range(config.num_hidden_layers)],
        "heads": [torch.ones(h) for h in config.heads_per_layer],
        "ffn": [torch.ones(f) for f in config.intermediate_sizes],
    }


def _ramped(full: float, final: float, ramp: float) -> float:
    return full + (final - full) * min(max(ramp, 0.0), 1.0)


@dataclass(frozen=True)
class Alignment:
    """Kept heads / FFN neurons per layer rounded to these multiples (1: no rounding), so the
    matrices have widths the hardware multiplies well."""

    heads: int = 1
    ffn: int = 1


def fit_to_budget(masks: L0Masks, budget: float, cost: Callable[[Structure], float], unit_cost: dict[str, float],
                  align: Alignment | None = None) -> StructureMasks:
    """Final masks for a budget on a cost linear in the kept units (parameters, seconds): the
    expected counts rounded, then the worst-scored units dropped while over the budget and the
    best-scored added while they fit, so the cost is the largest not above it (within one
    neuron's cost); then, if asked, every layer's counts rounded to the alignment's multiples."""
    config = masks.config
    scores = {**_all_kept(config), **masks.scores()}
    with torch.no_grad():
        expected = masks.expected_structure()
    layers = _layers_for_budget(config, torch.cat(scores["layers"]), round(float(expected["layers"])), budget, cost,
                                "layers" in masks.groups)
    chosen = {name: [_top_k_mask(s, round(float(e))) for s, e in zip(scores[name], expected[name], strict=True)]
              for name in ("heads", "ffn")}
    result = StructureMasks(layers, chosen["heads"], chosen["ffn"])
    size = cost(result.kept_structure(config.vocab_size))
    kept_layers = torch.nonzero(layers).flatten().tolist()
    units = [(score, unit_cost[name], name, layer, index)  # what can still be toggled: gated units of kept layers
             for name in ("heads", "ffn") if name in masks.groups
             for layer in kept_layers for index, score in enumerate(scores[name][layer].tolist())]
    for _score, unit, name, layer, index in sorted(u for u in units if chosen[u[2]][u[3]][u[4]]):
        if size <= budget:
            break
        chosen[name][layer][index] = False
        size -= unit
    # Then fill up with the best-scored units that still fit. A head costs far more than a neuron:
    # one that does not fit (or one just removed above) must not stop cheaper ones.
    for _score, unit, name, layer, index in sorted((u for u in units if not chosen[u[2]][u[3]][u[4]]), reverse=True):
        if size + unit <= budget:
            chosen[name][layer][index] = True
            size += unit
    if align is not None:
        for name, multiple in (("heads", align.heads), ("ffn", align.ffn)):
            if multiple > 1 and name in masks.groups:
                size = _align(chosen[name], scores[name], kept_layers, multiple, unit_cost[name], size, budget)
    return result


def _layers_for_budget(config, layer_scores: torch.Tensor, n_layers: int, budget: float, cost,
                       layers_gated: bool) -> torch.Tensor:
    """The best-scored `n_layers` layers; more while even all their units would fall short of the
    budget (undecided gates can round to fewer layers than it needs), fewer (if layers are pruned)
    while even none of their units would fit in it (a cost whose layers weigh more than their units)."""

    def kept(layers: torch.Tensor, units: bool) -> float:
        masks = StructureMasks(layers, [torch.full((h,), units) for h in config.heads_per_layer],
                               [torch.full((f,), units) for f in config.intermediate_sizes])
        return cost(masks.kept_structure(config.vocab_size))

    while n_layers < config.num_hidden_layers and kept(_top_k_mask(layer_scores, n_layers), True) < budget:
        n_layers += 1
    while layers_gated and n_layers > 0 and kept(_top_k_mask(layer_scores, n_layers), False) > budget:
        n_layers -= 1
    return _top_k_mask(layer_scores, n_layers)


def _align(kept: list[torch.Tensor], scores: list[torch.Tensor], layers: list[int], multiple: int, unit: float,
           size: float, budget: float) -> float:
    """Rounds each kept layer's count (in place) to the nearest multiple, taking the best-scored
    units and dropping the worst, then trades whole multiples between layers (dropping the weakest
    block while over the budget, adding the strongest while one fits); returns the new cost."""

    def block(layer: int, add: bool, n: int = multiple) -> tuple[float, torch.Tensor]:
        """The `n` best unkept (or worst kept) units of a layer and their score sum; a layer
        without `n` of them offers none (an empty block)."""
        pool = torch.nonzero(~kept[layer] if add else kept[layer]).flatten()
        if len(pool) < n or n == 0:
            return (float("-inf") if add else float("inf")), pool[:0]
        order = torch.argsort(scores[layer][pool], descending=add)[:n]
        return float(scores[layer][pool[order]].sum()), pool[order]

    for layer in layers:
        count = int(kept[layer].sum())
        target = min(len(kept[layer]), multiple * round(count / multiple))
        _, chosen = block(layer, target > count, abs(target - count))
        kept[layer][chosen] = target > count
        size += unit * (target - count)
    while size > budget:
        layer = min(layers, key=lambda i: block(i, add=False)[0])
        total, chosen = block(layer, add=False)
        if total == float("inf"):
            break
        kept[layer][chosen] = False
        size -= unit * len(chosen)
    while layers and size + unit * multiple <= budget:
        layer = max(layers, key=lambda i: block(i, add=True)[0])
        total, chosen = block(layer, add=True)
        if total == float("-inf"):
            break
        kept[layer][chosen] = True
        size += unit * len(chosen)
    return size


@dataclass(frozen=True)
class ArchitectureTarget:
    n_layers: int
    n_heads: int
    intermediate_size: int

    def validate(self, config: PrunableEncoderConfig, structures: tuple[str, ...]) -> None:
        limits = {
            "n_layers": (self.n_layers, config.num_hidden_layers, "layers"),
            "n_heads": (self.n_heads, max(config.heads_per_layer, default=0), "heads"),
            "intermediate_size": (self.intermediate_size, max(config.intermediate_sizes, default=0), "ffn"),
        }
        for key, (wanted, available, structure) in limits.items():
            if not 0 <= wanted <= available:
                raise TargetError(f"target_model.{key}={wanted} but the model has {available}: choose 0..{available}")
            if wanted < available and structure not in structures:
                raise TargetError(f"target_model.{key}={wanted} needs '{structure}' among the pruned structures")

    def structure(self, config: PrunableEncoderConfig) -> Structure:
        return Structure.uniform(self.n_layers, self.n_heads, self.intermediate_size, config.vocab_size)

    def constraint_names(self) -> list[str]:
        return ["layers", "heads_per_layer", "ffn_per_layer"]

    def gaps(self, masks: L0Masks, ramp: float = 1.0) -> torch.Tensor:
        config = masks.config
        expected = masks.expected_structure()
        n_layers = config.num_hidden_layers
        full_heads, full_ffn = max(config.heads_per_layer), max(config.intermediate_sizes)
        return torch.stack(
            [
                (expected["layers"] - _ramped(n_layers, self.n_layers, ramp)) / n_layers,
                (expected["heads"].mean() - _ramped(full_heads, self.n_heads, ramp)) / full_heads,
                (expected["ffn"].mean() - _ramped(full_ffn, self.intermediate_size, ramp)) / full_ffn,
            ]
        )

    def final_masks(self, masks: L0Masks, align: Alignment | None = None) -> StructureMasks:
        """Top-k by gate score; the widths are the target's own, so `align` does not apply."""
        scores = {**_all_kept(masks.config), **masks.scores()}
        layer_scores = torch.cat(scores["layers"])
        return StructureMasks(
            layers=_top_k_mask(layer_scores, self.n_layers),
            heads=[_top_k_mask(s, self.n_heads) for s in scores["heads"]],
            ffn=[_top_k_mask(s, self.intermediate_size) for s in scores["ffn"]],
        )

    def describe(self) -> str:
        return f"{self.n_layers} layers x {self.n_heads} heads x FFN {self.intermediate_size}"

    learns_masks = True

    def planned_structure(self, config: PrunableEncoderConfig) -> tuple[Structure, bool]:
        """(structure, exact): what the run will keep."""
        return self.structure(config), True

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        """The ramped target as an encoder parameter count (plotted beside the expected size)."""
        full = count_parameters(config).encoder
        return _ramped(full, count_parameters(config, self.structure(config)).encoder, ramp)


@dataclass(frozen=True)
class ParameterBudget:
    parameters: int
    scope: str = "encoder"  # "encoder" or "total"
    output_head_parameters: int = 0  # BGE-M3's sparse/ColBERT heads count towards a "total" budget
    fraction: float | None = field(default=None, compare=False)  # how it was asked for, to describe it

    @classmethod
    def from_fraction(
        cls, config: PrunableEncoderConfig, fraction: float, scope: str = "encoder", output_head_parameters: int = 0
    ) -> ParameterBudget:
        """`fraction` of the model's encoder (or total) parameters to keep."""
        if not 0.0 < fraction <= 1.0:
            raise TargetError(f"a parameter budget fraction must be in (0, 1], got {fraction}")
        full = cls._scope_size(config, None, scope, output_head_parameters)
        return cls(int(round(full * fraction)), scope, output_head_parameters, fraction)

    @staticmethod
    def _scope_size(config, structure, scope, output_head_parameters) -> int:
        if scope not in ("encoder", "total"):
            raise TargetError(f"a parameter budget's scope is 'encoder' or 'total', got {scope!r}")
        counts = count_parameters(config, structure, output_head_parameters)
        return counts.encoder if scope == "encoder" else counts.total

    def _size(self, config: PrunableEncoderConfig, structure: Structure | None = None) -> int:
        return self._scope_size(config, structure, self.scope, self.output_head_parameters)

    def validate(self, config: PrunableEncoderConfig, structures: tuple[str, ...]) -> None:
        if not structures:
            raise TargetError("a parameter budget needs at least one structure to prune")
        full = self._size(config)
        if "layers" in structures:
            smallest, removed = Structure((), (), config.vocab_size), "every layer removed"
        else:  # every layer stays: only the gated heads / neurons can go
            smallest = Structure(
                tuple(0 if "heads" in structures else h for h in config.heads_per_layer),
                tuple(0 if "ffn" in structures else f for f in config.intermediate_sizes),
                config.vocab_size,
            )
            units = {"heads": "head", "ffn": "FFN neuron"}
            removed = "every " + " and ".join(units[s] for s in units if s in structures) + " removed"
        floor = self._size(config, smallest)
        if not floor <= self.parameters <= full:
            raise TargetError(
                f"a {self.scope} budget of {self.parameters:,} parameters is outside what pruning "
                f"{', '.join(structures)} reaches for this model: {floor:,} ({removed}) to {full:,} (nothing removed)"
            )

    def constraint_names(self) -> list[str]:
        return [f"{self.scope}_parameters"]

    def gaps(self, masks: L0Masks, ramp: float = 1.0) -> torch.Tensor:
        full = self._size(masks.config)
        expected = masks.expected_parameters(self.output_head_parameters)[self.scope]
        return ((expected - _ramped(full, self.parameters, ramp)) / full).reshape(1)

    def final_masks(self, masks: L0Masks, align: Alignment | None = None) -> StructureMasks:
        config = masks.config
        unit_cost = {"heads": attention_parameters_per_head(config.hidden_size, config.attention_head_size),
                     "ffn": ffn_parameters_per_neuron(config.hidden_size)}
        return fit_to_budget(masks, self.parameters, lambda structure: self._size(config, structure), unit_cost, align)

    def describe(self) -> str:
        share = f"{self.fraction:.0%} of the {self.scope}: " if self.fraction is not None else ""
        return f"{share}{self.parameters:,} {self.scope} parameters"

    learns_masks = True

    def encoder_budget(self, config: PrunableEncoderConfig) -> int:
        """The budget in encoder parameters (a total budget less the embeddings and output heads)."""
        if self.scope == "encoder":
            return self.parameters
        counts = count_parameters(config, None, self.output_head_parameters)
        return self.parameters - (counts.total - counts.encoder)

    def planned_structure(self, config: PrunableEncoderConfig) -> tuple[Structure, bool]:
        """The budget spread evenly over every layer: a stand-in, since the run decides where to cut."""
        hidden = config.hidden_size
        return even_structure(config, self.encoder_budget(config), layer_fixed_parameters(hidden),
                              attention_parameters_per_head(hidden, config.attention_head_size),
                              ffn_parameters_per_neuron(hidden)), False

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        return _ramped(count_parameters(config).encoder, self.encoder_budget(config), ramp)


def even_structure(config: PrunableEncoderConfig, budget: float, layer_fixed: float, per_head: float,
                   per_neuron: float) -> Structure:
    """The uniform structure that keeps every layer and spends a budget on the layers evenly: heads
    scaled like the budget, the FFN width filling the rest (costs per layer, head and neuron). A
    fitted latency model can price a unit at zero (too cheap to time on a tiny model): free units
    are all kept."""
    full_heads, full_ffn = max(config.heads_per_layer), max(config.intermediate_sizes)
    layers = config.num_hidden_layers
    variable = budget - layers * layer_fixed
    units_cost = layers * (full_heads * per_head + full_ffn * per_neuron)
    share = 1.0 if units_cost <= 0 else min(1.0, max(0.0, variable / units_cost))
    heads = round(full_heads * share)
    left_per_layer = variable / layers - heads * per_head
    ffn = full_ffn if per_neuron <= 0 else int(left_per_layer // per_neuron)
    return Structure.uniform(layers, heads, min(full_ffn, max(0, ffn)), config.vocab_size)


@dataclass(frozen=True)
class LatencyTarget:
    """`seconds` per batch (at the cost model's batch size and length, on this machine): the
    unpruned model's predicted time over `speedup` when asked as a speedup."""

    model: LatencyModel = field(compare=False)
    seconds: float
    speedup: float | None = None

    learns_masks = True

    @classmethod
    def for_model(cls, model: LatencyModel, config: PrunableEncoderConfig, structures: tuple[str, ...],
                  speedup: float | None = None, seconds: float | None = None) -> LatencyTarget:
        try:
            budget = latency_budget(model, config, speedup, seconds, structures)
        except ValueError as error:
            raise TargetError(str(error)) from None
        return cls(model, budget, speedup)

    def validate(self, config: PrunableEncoderConfig, structures: tuple[str, ...]) -> None:
        """Reachability was checked when the budget was set (`for_model`)."""
        self.model.check_config(config)

    def describe(self) -> str:
        c = self.model.conditions
        wanted = f"{self.speedup:g}x faster: " if self.speedup is not None else ""
        return f"{wanted}{self.seconds * 1000:.1f} ms per batch of {c.batch_size} x {c.sequence_length} on this {c.device}"

    def constraint_names(self) -> list[str]:
        return ["latency"]

    def gaps(self, masks: L0Masks, ramp: float = 1.0) -> torch.Tensor:
        expected = masks.expected_structure()
        seconds = self.model.expected(expected["layer_keep"], expected["heads"], expected["ffn"])
        full = self.model.predict(self.model.full_structure)  # the expected time's own scale at the start
        return ((seconds - _ramped(full, self.seconds, ramp)) / full).reshape(1)

    def final_masks(self, masks: L0Masks, align: Alignment | None = None) -> StructureMasks:
        unit_cost = {"heads": self.model.per_head, "ffn": self.model.per_neuron}
        return fit_to_budget(masks, self.seconds, self.model.predict, unit_cost, align)

    def planned_structure(self, config: PrunableEncoderConfig) -> tuple[Structure, bool]:
        m = self.model
        return even_structure(config, self.seconds - m.base, m.layer_fixed, m.per_head, m.per_neuron), False

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        """The planned structure's encoder size (the run decides the real one)."""
        return float(count_parameters(config, self.planned_structure(config)[0]).encoder)


@dataclass(frozen=True)
class FixedStructure:
    """A structure given in advance (`fixed_masks`: a run's final_masks.json): the run prunes to
    it at once and only fine-tunes."""

    masks: StructureMasks = field(compare=False)
    source: str

    learns_masks = False

    @classmethod
    def from_file(cls, path: Path, config: PrunableEncoderConfig) -> FixedStructure:
        try:
            masks = StructureMasks.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TargetError(f"fixed_masks {path}: cannot read it as a final_masks.json ({error})") from None
        shapes_match = (
            len(masks.layers) == config.num_hidden_layers
            and [len(h) for h in masks.heads] == list(config.heads_per_layer)
            and [len(f) for f in masks.ffn] == list(config.intermediate_sizes)
        )
        if not shapes_match:
            raise TargetError(f"fixed_masks {path} was made for another model than this {config.source_model_type} "
                              f"with {config.num_hidden_layers} layers of {max(config.heads_per_layer, default=0)} heads")
        return cls(masks, str(path))

    def validate(self, config: PrunableEncoderConfig, structures: tuple[str, ...]) -> None:
        """Shapes were checked when the file was read."""

    def describe(self) -> str:
        return f"the structure in {self.source}"

    def constraint_names(self) -> list[str]:
        return []

    def final_masks(self, masks: L0Masks | None = None, align: Alignment | None = None) -> StructureMasks:
        return self.masks

    def planned_structure(self, config: PrunableEncoderConfig) -> tuple[Structure, bool]:
        return self.masks.kept_structure(config.vocab_size), True

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        return float(count_parameters(config, self.masks.kept_structure(config.vocab_size)).encoder)


SizeTarget = ArchitectureTarget | ParameterBudget | LatencyTarget | FixedStructure
