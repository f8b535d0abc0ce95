"""Physical pruning: slice away the layers, heads and neurons that binary masks remove.

The sliced model computes what the masked model computes: a removed layer was the identity, a
removed head contributed nothing to the output projection, a removed neuron nothing to the down
projection. A layer that keeps no head still adds its attention output bias and LayerNorm.
"""

from __future__ import annotations

import copy

import torch

from .embedder import Embedder
from .l0 import StructureMasks
from .modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel
from .sources import empty_encoder

# Linear layers whose output rows belong to heads / neurons, and those whose input columns do.
_HEAD_ROWS = ("attention.self.query", "attention.self.key", "attention.self.value")
_HEAD_COLUMNS = ("attention.output.dense",)
_NEURON_ROWS = ("intermediate.dense",)
_NEURON_COLUMNS = ("output.dense",)


def _head_feature_indices(kept_heads: torch.Tensor, head_size: int) -> torch.Tensor:
    """Kept head numbers -> their feature indices: head h owns features h*head_size ... +head_size-1."""
    heads = torch.nonzero(kept_heads).flatten()
    return (heads[:, None] * head_size + torch.arange(head_size, device=heads.device)).flatten()  # (kept heads * head_size,)


def _slice_layer(state: dict, old: int, new: int, heads: torch.Tensor, neurons: torch.Tensor) -> dict:
    out = {}
    prefix = f"encoder.layer.{old}."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        module, _, kind = name.rpartition(".")
        for rows, columns, index in ((_HEAD_ROWS, _HEAD_COLUMNS, heads), (_NEURON_ROWS, _NEURON_COLUMNS, neurons)):
            index = index.to(value.device)
            if module in rows:
                value = value.index_select(0, index)
            elif module in columns and kind == "weight":
                value = value.index_select(1, index)
        out[f"encoder.layer.{new}.{name}"] = value.clone()
    return out


def prune_encoder(encoder: PrunableEncoderModel, masks: StructureMasks) -> PrunableEncoderModel:
    config: PrunableEncoderConfig = encoder.config
    if len(masks.layers) != config.num_hidden_layers:
        raise ValueError(f"masks cover {len(masks.layers)} layers, the model has {config.num_hidden_layers}")
    kept_layers = torch.nonzero(masks.layers).flatten().tolist()
    new_config = copy.deepcopy(config)
    new_config.heads_per_layer = [int(masks.heads[i].sum()) for i in kept_layers]
    new_config.intermediate_sizes = [int(masks.ffn[i].sum()) for i in kept_layers]
    new_config.num_hidden_layers = len(kept_layers)
    new_config.intermediate_size = max(new_config.intermediate_sizes, default=0)

    state = encoder.state_dict()
    new_state = {k: v.clone() for k, v in state.items() if not k.startswith("encoder.layer.")}
    for new_index, old_index in enumerate(kept_layers):
        head_features = _head_feature_indices(masks.heads[old_index], config.attention_head_size)
        neurons = torch.nonzero(masks.ffn[old_index]).flatten()
        new_state.update(_slice_layer(state, old_index, new_index, head_features, neurons))

    return encoder_with_weights(new_config, new_state).train(encoder.training)


def encoder_with_weights(config: PrunableEncoderConfig, state: dict[str, torch.Tensor]) -> PrunableEncoderModel:
    """An encoder that takes `state`'s tensors as its weights (no copy): a randomly initialised one would
    hold a second copy of every weight (at BGE-M3's size, 1 GB of word embeddings) while they are loaded."""
    encoder = empty_encoder(config)
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder


def prune_embedder(embedder: Embedder, masks: StructureMasks) -> Embedder:
    """A new, smaller embedder; the original is left untouched (it stays the teacher)."""
    return embedder.with_parts(prune_encoder(embedder.encoder, masks))


def kept_indices(masks: StructureMasks) -> list[dict]:
    """Per kept layer: its index in the source model and the source indices of what it keeps."""
    return [
        {
            "source_layer": layer,
            "heads": torch.nonzero(masks.heads[layer]).flatten().tolist(),
            "ffn_neurons": int(masks.ffn[layer].sum()),
        }
        for layer in torch.nonzero(masks.layers).flatten().tolist()
    ]
