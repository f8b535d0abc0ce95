"""Size targets, the Lagrangian that pulls the expected size to them, and the final top-k masks.

Three ways to state a target, one interface (validate, describe, the planned structure, the
encoder size along the ramp, the constraints and the final masks):
- `ArchitectureTarget`: the original design's `target_model: {n_layers, n_heads, intermediate_size}`,
  a uniform result. Three constraints (layers, heads per layer, neurons per layer) are enforced.
- `ParameterBudget`: a count of encoder or total parameters; the method allocates heads and
  neurons per layer freely. One constraint on the expected parameter count.
- `FixedStructure`: given masks (a run's final_masks.json); nothing to learn, no constraint.

Each constraint is a relative gap (expected - target) / full size, so one set of multiplier
learning rates works for MiniLM and BGE-M3 alike. The target is ramped linearly from the full
size over a warmup, as in CoFi / Sheared-LLaMA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .accounting import (
    Structure,
    attention_parameters_per_head,
    count_parameters,
    ffn_parameters_per_neuron,
    layer_fixed_parameters,
)
from .l0 import L0Masks, StructureMasks
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

    def final_masks(self, masks: L0Masks) -> StructureMasks:
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

    def final_masks(self, masks: L0Masks) -> StructureMasks:
        """Rounds the expected counts, then adds or removes the best/worst-scored heads and neurons
        until the size is the largest not above the budget (within one FFN neuron's cost)."""
        config = masks.config
        scores = {**_all_kept(config), **masks.scores()}
        with torch.no_grad():
            expected = masks.expected_structure()
        layer_scores = torch.cat(scores["layers"])
        n_layers = int(round(float(expected["layers"])))
        # Gates still undecided can round to fewer layers than the budget needs: then even every unit
        # of the kept layers would fall short, so take the next best layers until the budget fits.
        while n_layers < config.num_hidden_layers and self._size(config, StructureMasks(
            _top_k_mask(layer_scores, n_layers), [torch.ones(h, dtype=torch.bool) for h in config.heads_per_layer],
            [torch.ones(f, dtype=torch.bool) for f in config.intermediate_sizes],
        ).kept_structure(config.vocab_size)) < self.parameters:
            n_layers += 1
        layers = _top_k_mask(layer_scores, n_layers)
        heads = [_top_k_mask(s, int(round(float(e)))) for s, e in zip(scores["heads"], expected["heads"], strict=True)]
        ffn = [_top_k_mask(s, int(round(float(e)))) for s, e in zip(scores["ffn"], expected["ffn"], strict=True)]
        result = StructureMasks(layers, heads, ffn)
        size = self._size(config, result.kept_structure(config.vocab_size))

        # Units that can still be toggled: heads and neurons of kept layers, in gated structures.
        unit_cost = {
            "heads": attention_parameters_per_head(config.hidden_size, config.attention_head_size),
            "ffn": ffn_parameters_per_neuron(config.hidden_size),
        }
        units = []  # (score, cost, structure, layer, index)
        for name in ("heads", "ffn"):
            if name not in masks.groups:
                continue
            for layer in torch.nonzero(layers).flatten().tolist():
                for index, score in enumerate(scores[name][layer].tolist()):
                    units.append((score, unit_cost[name], name, layer, index))
        chosen = {"heads": heads, "ffn": ffn}
        if size > self.parameters:
            for _score, cost, name, layer, index in sorted(u for u in units if chosen[u[2]][u[3]][u[4]]):
                if size <= self.parameters:
                    break
                chosen[name][layer][index] = False
                size -= cost
        # Then fill up with the best-scored units that still fit. A head costs far more than a
        # neuron: one that does not fit (or one just removed above) must not stop cheaper ones.
        for _score, cost, name, layer, index in sorted((u for u in units if not chosen[u[2]][u[3]][u[4]]), reverse=True):
            if size + cost <= self.parameters:
                chosen[name][layer][index] = True
                size += cost
        return result

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
        return even_structure(config, self.encoder_budget(config)), False

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        return _ramped(count_parameters(config).encoder, self.encoder_budget(config), ramp)


def even_structure(config: PrunableEncoderConfig, encoder_budget: int) -> Structure:
    """The uniform structure that keeps every layer and spends an encoder budget evenly: heads
    scaled like the budget, the FFN width filling the rest."""
    hidden, head = config.hidden_size, config.attention_head_size
    full_heads, full_ffn = max(config.heads_per_layer), max(config.intermediate_sizes)
    layers = config.num_hidden_layers
    per_head, per_neuron = attention_parameters_per_head(hidden, head), ffn_parameters_per_neuron(hidden)
    variable = encoder_budget - layers * layer_fixed_parameters(hidden)
    share = min(1.0, max(0.0, variable / (layers * (full_heads * per_head + full_ffn * per_neuron))))
    heads = round(full_heads * share)
    ffn = int((variable / layers - heads * per_head) // per_neuron)
    return Structure.uniform(layers, heads, min(full_ffn, max(0, ffn)), config.vocab_size)


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

    def final_masks(self, masks: L0Masks | None = None) -> StructureMasks:
        return self.masks

    def planned_structure(self, config: PrunableEncoderConfig) -> tuple[Structure, bool]:
        return self.masks.kept_structure(config.vocab_size), True

    def encoder_parameters(self, config: PrunableEncoderConfig, ramp: float = 1.0) -> float:
        return float(count_parameters(config, self.masks.kept_structure(config.vocab_size)).encoder)


SizeTarget = ArchitectureTarget | ParameterBudget | FixedStructure


# The linear multiplier integrates only while the gap is within this share of the full size, at
# this fraction of the quadratic one's learning rate, and leaks (AdamW decay) at this rate: it loses
# lr * INTEGRAL_RATE * INTEGRAL_LEAK of its value per step (5% at the default lr), which bounds it
# near 1 and lets it fade in about 20 steps once the gap closes (see Lagrangian).
INTEGRATION_BAND = 0.05
INTEGRAL_RATE = 0.1
INTEGRAL_LEAK = 1.0


class Lagrangian(nn.Module):
    """`l1 * gap + l2 * gap^2` summed over constraints, the multipliers trained by gradient ascent
    (`optimizer`): a persistent gap makes them grow until the gates give in, which a fixed penalty
    weight cannot guarantee.

    Read as a controller, the quadratic term is the proportional part (its push follows the gap and
    reverses with it) and `l1` the integral part that removes the offset the task loss leaves. The
    gates start near 1 and lag the ramped target by tens of steps; integrating those large gaps wound
    `l1` up and drove MiniLM's expected size to 2.2M against a 5.3M target. So `l1` integrates only
    inside INTEGRATION_BAND, at INTEGRAL_RATE of the rate, and leaks (a leaky integrator): without
    the leak it still wound up inside the band and left the size 1.4% under target after 300 mask
    steps; with it, 0.0% after 150 and 0.8% after 300 (benchmarks/RESULTS.md has the runs).
    """

    def __init__(self, constraint_names: list[str]):
        super().__init__()
        self.constraint_names = list(constraint_names)
        self.lambda_1 = nn.Parameter(torch.zeros(len(constraint_names)))
        self.lambda_2 = nn.Parameter(torch.zeros(len(constraint_names)))

    def forward(self, gaps: torch.Tensor) -> torch.Tensor:
        # Same value either way; outside the band lambda_1 gets no gradient (anti-windup).
        integrating = (gaps.detach().abs() <= INTEGRATION_BAND).to(gaps.dtype)
        lambda_1 = self.lambda_1 * integrating + self.lambda_1.detach() * (1 - integrating)
        return (lambda_1 * gaps + self.lambda_2 * gaps.pow(2)).sum()

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Gradient ascent on the multipliers, `l1` at INTEGRAL_RATE of `lr` and leaking."""
        groups = [{"params": [self.lambda_2], "lr": lr, "weight_decay": 0.0},
                  {"params": [self.lambda_1], "lr": lr * INTEGRAL_RATE, "weight_decay": INTEGRAL_LEAK}]
        return torch.optim.AdamW(groups, maximize=True)

    def multipliers(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.constraint_names):
            out[f"lambda_1/{name}"] = float(self.lambda_1[i].detach())
            out[f"lambda_2/{name}"] = float(self.lambda_2[i].detach())
        return out
