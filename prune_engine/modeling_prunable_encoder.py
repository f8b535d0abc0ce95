"""A BERT-family encoder whose every layer may keep its own number of heads and FFN neurons.

This one file is both the model the engine prunes and the modeling file an export ships
(`auto_map` in the exported config points here), so the two cannot drift apart. It depends on
torch and transformers only.

It covers the encoders Hugging Face stores as BERT (MiniLM), RoBERTa and XLM-RoBERTa (BGE-M3):
parameter names equal Hugging Face's, so a stock checkpoint's state dict loads as it is. RoBERTa
flavours number positions from `pad_token_id + 1` and skip padding (`position_ids_from_padding`).

Pruning gates are an optional forward argument (see `EncoderGates`); with none given the model
computes exactly what the stock model computes. BERT layers are post-LayerNorm, so a gated-off
layer must be the identity: a layer is gated as `h + z * (layer(h) - h)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput


def _check_layers(heads_per_layer: list[int], intermediate_sizes: list[int], num_attention_heads: int) -> None:
    if len(heads_per_layer) != len(intermediate_sizes):
        raise ValueError(
            f"heads_per_layer has {len(heads_per_layer)} layers but intermediate_sizes has "
            f"{len(intermediate_sizes)}; give one entry per layer in both"
        )
    bad = [n for n in list(heads_per_layer) + list(intermediate_sizes) if int(n) != n or n < 0]
    if bad:
        raise ValueError(f"per-layer head counts and FFN sizes must be non-negative integers, got {bad}")
    if any(h > num_attention_heads for h in heads_per_layer):
        raise ValueError(f"a layer cannot have more than num_attention_heads={num_attention_heads} heads: {heads_per_layer}")


class PrunableEncoderConfig(PretrainedConfig):
    """Config with explicit per-layer structure: `heads_per_layer[i]` heads of `attention_head_size`
    and `intermediate_sizes[i]` FFN neurons in layer i. The hidden size is never pruned."""

    model_type = "prunable_encoder"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        attention_head_size: int | None = None,
        intermediate_size: int = 1536,
        heads_per_layer: list[int] | None = None,
        intermediate_sizes: list[int] | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_ids_from_padding: bool = False,
        source_model_type: str = "bert",
        **kwargs,
    ):
        if heads_per_layer is None:
            heads_per_layer = [num_attention_heads] * num_hidden_layers
        if intermediate_sizes is None:
            intermediate_sizes = [intermediate_size] * len(heads_per_layer)
        if attention_head_size is None:
            if hidden_size % num_attention_heads:
                raise ValueError(
                    f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}; "
                    "give attention_head_size explicitly"
                )
            attention_head_size = hidden_size // num_attention_heads
        _check_layers(heads_per_layer, intermediate_sizes, num_attention_heads)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = attention_head_size
        self.heads_per_layer = [int(h) for h in heads_per_layer]
        self.intermediate_sizes = [int(f) for f in intermediate_sizes]
        self.num_hidden_layers = len(self.heads_per_layer)
        self.intermediate_size = max(self.intermediate_sizes, default=0)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_ids_from_padding = position_ids_from_padding
        self.source_model_type = source_model_type
        super().__init__(pad_token_id=pad_token_id, **kwargs)


@dataclass
class EncoderGates:
    """Multiplicative gates, one tensor per layer: `layer[i]` is a scalar, `heads[i]` has
    `heads_per_layer[i]` entries and `ffn[i]` has `intermediate_sizes[i]`. None leaves that
    structure ungated."""

    layer: list[torch.Tensor] | None = None
    heads: list[torch.Tensor] | None = None
    ffn: list[torch.Tensor] | None = None

    def for_layer(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        pick = lambda gates: None if gates is None else gates[index]  # noqa: E731
        return pick(self.layer), pick(self.heads), pick(self.ffn)


class PrunableEmbeddings(nn.Module):
    def __init__(self, config: PrunableEncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pad_token_id = config.pad_token_id
        self.position_ids_from_padding = config.position_ids_from_padding

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.position_ids_from_padding:
            # RoBERTa/XLM-R: real tokens count up from pad_token_id + 1, padding keeps pad_token_id.
            not_pad = input_ids.ne(self.pad_token_id).long()
            return torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(self.position_ids(input_ids))
        )
        return self.dropout(self.LayerNorm(embeddings))


class PrunableSelfAttention(nn.Module):
    def __init__(self, config: PrunableEncoderConfig, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = config.attention_head_size
        inner = num_heads * self.head_size
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self, hidden: torch.Tensor, key_mask: torch.Tensor | None, head_gate: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        if self.num_heads == 0:
            return hidden.new_zeros(batch, length, 0)

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            # (batch, length, heads * head_size) -> (batch, heads, length, head_size)
            return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split_heads(self.query(hidden)),
            split_heads(self.key(hidden)),
            split_heads(self.value(hidden)),
            attn_mask=key_mask,
            dropout_p=self.dropout_prob if self.training else 0.0,
        )
        if head_gate is not None:
            context = context * head_gate.to(context.dtype).view(1, -1, 1, 1)
        # (batch, heads, length, head_size) -> (batch, length, heads * head_size)
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)


class PrunableProjection(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm, Hugging Face's `*Output` block."""

    def __init__(self, config: PrunableEncoderConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(features)) + residual)


class PrunableAttention(nn.Module):
    def __init__(self, config: PrunableEncoderConfig, num_heads: int):
        super().__init__()
        self.self = PrunableSelfAttention(config, num_heads)
        self.output = PrunableProjection(config, num_heads * config.attention_head_size)

    def forward(self, hidden, key_mask, head_gate=None):
        return self.output(self.self(hidden, key_mask, head_gate), hidden)


class PrunableIntermediate(nn.Module):
    def __init__(self, config: PrunableEncoderConfig, size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor, ffn_gate: torch.Tensor | None = None) -> torch.Tensor:
        activated = self.activation(self.dense(hidden))
        return activated if ffn_gate is None else activated * ffn_gate.to(activated.dtype)


class PrunableLayer(nn.Module):
    def __init__(self, config: PrunableEncoderConfig, num_heads: int, intermediate_size: int):
        super().__init__()
        self.attention = PrunableAttention(config, num_heads)
        self.intermediate = PrunableIntermediate(config, intermediate_size)
        self.output = PrunableProjection(config, intermediate_size)

    def forward(self, hidden, key_mask, layer_gate=None, head_gate=None, ffn_gate=None):
        attended = self.attention(hidden, key_mask, head_gate)
        out = self.output(self.intermediate(attended, ffn_gate), attended)
        if layer_gate is None:
            return out
        return hidden + layer_gate.to(out.dtype) * (out - hidden)


class PrunableEncoderStack(nn.Module):
    def __init__(self, config: PrunableEncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            PrunableLayer(config, heads, ffn)
            for heads, ffn in zip(config.heads_per_layer, config.intermediate_sizes, strict=True)
        )
        self.gradient_checkpointing = False

    def forward(self, hidden, key_mask, gates: EncoderGates | None, output_hidden_states: bool):
        all_hidden = [hidden] if output_hidden_states else None
        for index, layer in enumerate(self.layer):
            layer_args = (hidden, key_mask, *(gates.for_layer(index) if gates else (None, None, None)))
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(layer, *layer_args, use_reentrant=False)
            else:
                hidden = layer(*layer_args)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, all_hidden


class PrunableEncoderModel(PreTrainedModel):
    """The encoder without a pooler: sentence embeddings come from pooling `last_hidden_state`."""

    config_class = PrunableEncoderConfig
    base_model_prefix = "encoder_model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PrunableLayer"]

    def __init__(self, config: PrunableEncoderConfig):
        super().__init__(config)
        self.embeddings = PrunableEmbeddings(config)
        self.encoder = PrunableEncoderStack(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.encoder.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        gates: EncoderGates | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        always_mask: bool = False,
    ) -> BaseModelOutput | tuple:
        """`always_mask` applies the attention mask even to a batch without padding: a traced graph
        (ONNX export) must not bake in the no-padding shortcut of the batch it was traced with."""
        hidden = self.embeddings(input_ids, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # (batch, length) -> boolean mask (batch, 1, 1, length), True where attended: the softmax of
        # an additive dtype-min bias, without building one. Without padding no mask is passed, which
        # lets SDPA pick its fused (flash) kernels on GPU.
        key_mask = None
        if always_mask or not bool(attention_mask.all()):
            key_mask = attention_mask[:, None, None, :].bool()
        hidden, all_hidden = self.encoder(hidden, key_mask, gates, output_hidden_states)
        if not return_dict:
            return (hidden,) if all_hidden is None else (hidden, tuple(all_hidden))
        return BaseModelOutput(
            last_hidden_state=hidden, hidden_states=tuple(all_hidden) if all_hidden is not None else None
        )


PrunableEncoderConfig.register_for_auto_class()
PrunableEncoderModel.register_for_auto_class("AutoModel")
