"""Hard-concrete L0 gates (Louizos, Welling & Kingma 2018) over layers, attention heads and FFN neurons.

Each gate z in [0, 1] is a stretched, clipped concrete variable with a learned location
`log_alpha`. Training samples z (the reparameterised noise keeps it differentiable); evaluation
uses its deterministic value. P(z != 0) is differentiable in `log_alpha`, which is what makes the
expected size differentiable. The hidden dimension is never gated.

One `HardConcreteGates` serves every structure: it holds a flat vector of gates split into
per-layer groups of any sizes, so uneven structures (an already pruned model) need no special case.

Example:
    >>> from prune_engine.presets import bge_m3_config
    >>> masks = L0Masks(bge_m3_config())
    >>> [len(g) for g in masks.gates().heads][:2], float(masks.expected_structure()["layers"])  # doctest: +ELLIPSIS
    ([16, 16], 23.9...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .accounting import Structure, embedding_parameters, layer_parameters
from .modeling_prunable_encoder import EncoderGates, PrunableEncoderConfig

# Louizos et al. 2018: temperature 2/3, stretched to (-0.1, 1.1) so that exact 0 and 1 have mass.
TEMPERATURE = 2.0 / 3.0
STRETCH_LOW, STRETCH_HIGH = -0.1, 1.1
# Uniform noise is drawn from (EPSILON, 1 - EPSILON) so its logit stays finite.
EPSILON = 1e-6
# A gate is "decided" when its deterministic value is this close to 0 or 1.
DECIDED_MARGIN = 0.05
STRUCTURES = ("layers", "heads", "ffn")
# Adam betas for the gate logits: a short momentum, so gates stop soon after the expected size
# reaches the target instead of coasting past it (on MiniLM the default 0.9 fell 9% under the
# target before settling; 0.5 did not fall under).
GATE_ADAM_BETAS = (0.5, 0.999)


class HardConcreteGates(nn.Module):
    def __init__(self, group_sizes: list[int], init_keep_probability: float | torch.Tensor = 0.99):
        """`init_keep_probability`: one P(z != 0) for every gate, or one per gate ((n_gates,), flat)."""
        super().__init__()
        self.group_sizes = [int(s) for s in group_sizes]
        start = torch.as_tensor(init_keep_probability, dtype=torch.float64)
        if start.dim() and start.shape != (sum(self.group_sizes),):
            raise ValueError(f"init_keep_probability must have one value per gate ({sum(self.group_sizes)}), "
                             f"got shape {tuple(start.shape)}")
        start = start.expand(sum(self.group_sizes))
        if not bool(((start > 0.0) & (start < 1.0)).all()):
            raise ValueError("init_keep_probability must lie strictly between 0 and 1")
        # Chosen so that P(z != 0) starts at init_keep_probability: the model starts (almost) unpruned.
        logit = torch.log(start / (1.0 - start))
        self.log_alpha = nn.Parameter((logit + TEMPERATURE * math.log(-STRETCH_LOW / STRETCH_HIGH)).float())

    def __len__(self) -> int:
        return self.log_alpha.numel()

    def sample(self) -> torch.Tensor:
        noise = torch.empty_like(self.log_alpha).uniform_(EPSILON, 1.0 - EPSILON)
        concrete = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + self.log_alpha) / TEMPERATURE)
        return (concrete * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW).clamp(0.0, 1.0)

    def keep_probability(self) -> torch.Tensor:
        """P(z != 0) per gate: the expected L0 norm, differentiable in log_alpha."""
        return torch.sigmoid(self.log_alpha - TEMPERATURE * math.log(-STRETCH_LOW / STRETCH_HIGH))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(flat, self.group_sizes))

    def group_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """(n_gates,) -> (n_groups,): e.g. the expected number of heads kept in each layer."""
        return torch.stack([part.sum() for part in self.split(flat)])

    def decided_fraction(self) -> float:
        value = self.deterministic()
        return float(((value < DECIDED_MARGIN) | (value > 1.0 - DECIDED_MARGIN)).float().mean())


@dataclass(frozen=True)
class StructureMasks:
    """Binary keep-masks, one tensor per layer of the model being pruned."""

    layers: torch.Tensor  # (n_layers,) bool
    heads: list[torch.Tensor]  # n_layers x (heads_in_layer,) bool
    ffn: list[torch.Tensor]  # n_layers x (neurons_in_layer,) bool

    def kept_structure(self, vocab_size: int) -> Structure:
        kept = [i for i, keep in enumerate(self.layers.tolist()) if keep]
        return Structure(
            tuple(int(self.heads[i].sum()) for i in kept), tuple(int(self.ffn[i].sum()) for i in kept), vocab_size
        )

    def as_gates(self) -> EncoderGates:
        """The masks as gates for the masked (not yet sliced) model."""
        return EncoderGates(
            layer=[v.float() for v in self.layers],
            heads=[h.float() for h in self.heads],
            ffn=[f.float() for f in self.ffn],
        )

    def as_dict(self) -> dict:
        return {
            "layers": self.layers.tolist(),
            "heads": [h.tolist() for h in self.heads],
            "ffn": [f.tolist() for f in self.ffn],
        }

    def snapshot(self, config: PrunableEncoderConfig) -> dict:
        """Per layer of the source model: layer kept, head masks, FFN neurons kept (JSON, for plots)."""
        return {
            "layers": [float(v) for v in self.layers],
            "heads": [[float(v) for v in h] for h in self.heads],
            "ffn_kept": [int(f.sum()) for f in self.ffn],
            "ffn_size": list(config.intermediate_sizes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> StructureMasks:
        return cls(
            layers=torch.tensor(data["layers"], dtype=torch.bool),
            heads=[torch.tensor(h, dtype=torch.bool) for h in data["heads"]],
            ffn=[torch.tensor(f, dtype=torch.bool) for f in data["ffn"]],
        )


class L0Masks(nn.Module):
    """The gates of one encoder. `structures` picks what may be pruned; the rest stay ungated."""

    def __init__(
        self,
        config: PrunableEncoderConfig,
        structures: tuple[str, ...] = STRUCTURES,
        init_keep_probability: float = 0.99,
        init_per_gate: dict[str, torch.Tensor] | None = None,
    ):
        """`init_per_gate`: a structure's flat (n_gates,) initial keep probabilities, in place of
        `init_keep_probability` (importance-initialised gates)."""
        super().__init__()
        unknown = set(structures) - set(STRUCTURES)
        if unknown:
            raise ValueError(f"unknown structures {sorted(unknown)}; choose from {STRUCTURES}")
        self.config = config
        self.structures = tuple(structures)
        sizes = {
            "layers": [1] * config.num_hidden_layers,
            "heads": list(config.heads_per_layer),
            "ffn": list(config.intermediate_sizes),
        }
        self.groups = nn.ModuleDict(
            {name: HardConcreteGates(sizes[name], (init_per_gate or {}).get(name, init_keep_probability))
             for name in self.structures}
        )

    def gates(self) -> EncoderGates:
        """Sampled gates in training mode, deterministic ones in evaluation mode."""
        values = {}
        for name, group in self.groups.items():
            flat = group.sample() if self.training else group.deterministic()
            values[name] = group.split(flat)
        layer = values.get("layers")
        return EncoderGates(
            layer=[g.squeeze(0) for g in layer] if layer is not None else None,
            heads=values.get("heads"),
            ffn=values.get("ffn"),
        )

    def expected_structure(self) -> dict[str, torch.Tensor]:
        """Differentiable expectations: layers kept (scalar), and per layer the probability the layer
        is kept, its expected heads and its expected neurons."""
        n_layers = self.config.num_hidden_layers
        layer_keep = (
            self.groups["layers"].keep_probability()
            if "layers" in self.groups
            else torch.ones(n_layers, device=self._device())
        )
        per_layer = {}
        for name, full in (("heads", self.config.heads_per_layer), ("ffn", self.config.intermediate_sizes)):
            if name in self.groups:
                group = self.groups[name]
                per_layer[name] = group.group_sums(group.keep_probability())
            else:
                per_layer[name] = torch.tensor(full, dtype=torch.float32, device=self._device())
        return {"layers": layer_keep.sum(), "layer_keep": layer_keep, **per_layer}

    def expected_parameters(self, output_head_parameters: int = 0, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
        """Expected encoder and total parameters: each layer's cost weighted by P(layer kept), with
        its expected heads and neurons (gates independent, so expectations multiply)."""
        expected = self.expected_structure()
        config = self.config
        per_layer = layer_parameters(config.hidden_size, config.attention_head_size, expected["heads"], expected["ffn"])
        encoder = (expected["layer_keep"] * per_layer).sum()
        fixed = embedding_parameters(config, vocab_size) + output_head_parameters
        return {"encoder": encoder, "total": encoder + fixed}

    def decided_fraction(self) -> float:
        total = sum(len(g) for g in self.groups.values())
        return sum(g.decided_fraction() * len(g) for g in self.groups.values()) / max(total, 1)

    def scores(self) -> dict[str, list[torch.Tensor]]:
        """Per-layer gate scores (log_alpha): the ranking the final top-k selection uses, on the CPU
        where the binary masks it makes live (beside the ungated structures' all-kept masks)."""
        return {name: group.split(group.log_alpha.detach().cpu()) for name, group in self.groups.items()}

    def deterministic_values(self) -> dict[str, list[torch.Tensor]]:
        """Per-layer deterministic gate values in [0, 1], for heatmaps and snapshots."""
        return {name: group.split(group.deterministic().detach()) for name, group in self.groups.items()}

    def snapshot(self) -> dict:
        """Per layer: deterministic layer gate, head gates, FFN neurons above one half (JSON, for
        heatmaps); ungated structures count as kept."""
        values = self.deterministic_values()
        config = self.config
        heads, ffn = values.get("heads"), values.get("ffn")
        return {
            "layers": [float(v) for v in values.get("layers", [torch.ones(1)] * config.num_hidden_layers)],
            "heads": [h.tolist() for h in heads] if heads is not None else [[1.0] * h for h in config.heads_per_layer],
            "ffn_kept": [int((f > 0.5).sum()) for f in ffn] if ffn is not None else list(config.intermediate_sizes),
            "ffn_size": list(config.intermediate_sizes),
        }

    def _device(self) -> torch.device:
        return next(self.parameters()).device
