"""Exact parameter and FLOP accounting for any structure of a BERT-family encoder, without weights.

The per-layer formula is written once and works on ints (exact counts of a structure) and on
tensors (the differentiable expected size the L0 gates are trained against), so what the
Lagrangian drives and what the export weighs are the same arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .modeling_prunable_encoder import PrunableEncoderConfig


@dataclass(frozen=True)
class Structure:
    """What a (pruned) encoder keeps: per kept layer, its head count and FFN width; and its vocabulary."""

    heads_per_layer: tuple[int, ...]
    intermediate_sizes: tuple[int, ...]
    vocab_size: int

    def __post_init__(self):
        if len(self.heads_per_layer) != len(self.intermediate_sizes):
            raise ValueError("heads_per_layer and intermediate_sizes need one entry per kept layer each")

    @classmethod
    def of(cls, config: PrunableEncoderConfig) -> Structure:
        return cls(tuple(config.heads_per_layer), tuple(config.intermediate_sizes), config.vocab_size)

    @classmethod
    def uniform(cls, n_layers: int, n_heads: int, intermediate_size: int, vocab_size: int) -> Structure:
        return cls((n_heads,) * n_layers, (intermediate_size,) * n_layers, vocab_size)

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    def describe(self) -> str:
        heads, ffn = set(self.heads_per_layer), set(self.intermediate_sizes)
        heads_text = str(heads.pop()) if len(heads) == 1 else f"{min(heads)}-{max(heads)}"
        ffn_text = str(ffn.pop()) if len(ffn) == 1 else f"{min(ffn)}-{max(ffn)}"
        return f"{self.num_layers} layers, {heads_text} heads, FFN {ffn_text}, vocab {self.vocab_size:,}"


def attention_parameters_per_head(hidden_size: int, head_size: int) -> int:
    """Q, K, V rows with their biases plus the head's columns of the output projection."""
    return 4 * hidden_size * head_size + 3 * head_size


def ffn_parameters_per_neuron(hidden_size: int) -> int:
    """One row of the up projection with its bias and one column of the down projection."""
    return 2 * hidden_size + 1


def layer_fixed_parameters(hidden_size: int) -> int:
    """What a kept layer costs even with no heads and no neurons: two output biases, two LayerNorms."""
    return 2 * (hidden_size + 2 * hidden_size)


def layer_parameters(hidden_size: int, head_size: int, n_heads, n_neurons):
    """Parameters of one kept layer; `n_heads`/`n_neurons` may be ints or (expected) tensors."""
    return (
        layer_fixed_parameters(hidden_size)
        + attention_parameters_per_head(hidden_size, head_size) * n_heads
        + ffn_parameters_per_neuron(hidden_size) * n_neurons
    )


def embedding_parameters(config: PrunableEncoderConfig, vocab_size: int | None = None) -> int:
    vocab = config.vocab_size if vocab_size is None else vocab_size
    rows = vocab + config.max_position_embeddings + config.type_vocab_size
    return rows * config.hidden_size + 2 * config.hidden_size


@dataclass(frozen=True)
class ParameterCounts:
    embeddings: int
    encoder: int
    output_heads: int  # BGE-M3's sparse and multi-vector projections, when present

    @property
    def total(self) -> int:
        return self.embeddings + self.encoder + self.output_heads

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def count_parameters(
    config: PrunableEncoderConfig, structure: Structure | None = None, output_head_parameters: int = 0
) -> ParameterCounts:
    """Exact counts (no pooler: sentence embeddings never use it)."""
    structure = structure or Structure.of(config)
    encoder = sum(
        layer_parameters(config.hidden_size, config.attention_head_size, heads, ffn)
        for heads, ffn in zip(structure.heads_per_layer, structure.intermediate_sizes, strict=True)
    )
    return ParameterCounts(embedding_parameters(config, structure.vocab_size), encoder, output_head_parameters)


def flops_per_token(config: PrunableEncoderConfig, structure: Structure | None, sequence_length: int) -> int:
    """Forward multiply-accumulates x 2 per token at a given length; embedding lookups and
    LayerNorms are negligible and left out."""
    structure = structure or Structure.of(config)
    hidden, head = config.hidden_size, config.attention_head_size
    total = 0
    for heads, ffn in zip(structure.heads_per_layer, structure.intermediate_sizes, strict=True):
        inner = heads * head
        projections = 2 * hidden * 3 * inner + 2 * inner * hidden  # Q, K, V in; output projection
        attention = 2 * 2 * sequence_length * inner  # scores QK^T and the weighted sum of V
        feed_forward = 2 * 2 * hidden * ffn
        total += projections + attention + feed_forward
    return total


@dataclass(frozen=True)
class SizeReport:
    """Everything the CLI, README and workbench show about a structure, computed, never assumed."""

    before: ParameterCounts
    after: ParameterCounts
    flops_before: int
    flops_after: int
    sequence_length: int
    structure: Structure

    @property
    def total_reduction(self) -> float:
        return 1.0 - self.after.total / self.before.total

    @property
    def encoder_reduction(self) -> float:
        return 1.0 - self.after.encoder / self.before.encoder

    @property
    def predicted_speedup(self) -> float:
        return self.flops_before / max(self.flops_after, 1)

    def as_dict(self) -> dict:
        return {
            "structure": asdict(self.structure),
            "parameters_before": self.before.as_dict(),
            "parameters_after": self.after.as_dict(),
            "total_reduction": self.total_reduction,
            "encoder_reduction": self.encoder_reduction,
            "flops_per_token_before": self.flops_before,
            "flops_per_token_after": self.flops_after,
            "sequence_length": self.sequence_length,
            "predicted_speedup": self.predicted_speedup,
        }


def size_report(
    config: PrunableEncoderConfig, structure: Structure, sequence_length: int = 512, output_head_parameters: int = 0
) -> SizeReport:
    return SizeReport(
        before=count_parameters(config, None, output_head_parameters),
        after=count_parameters(config, structure, output_head_parameters),
        flops_before=flops_per_token(config, None, sequence_length),
        flops_after=flops_per_token(config, structure, sequence_length),
        sequence_length=sequence_length,
        structure=structure,
    )
