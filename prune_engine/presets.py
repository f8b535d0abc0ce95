"""Known shapes: BGE-M3's architecture and the original design's three targets for it."""

from __future__ import annotations

from .modeling_prunable_encoder import PrunableEncoderConfig


def bge_m3_config() -> PrunableEncoderConfig:
    """BAAI/bge-m3 (XLM-RoBERTa-large): used for accounting and random-weight speed figures."""
    return PrunableEncoderConfig(
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        position_ids_from_padding=True,
        source_model_type="xlm-roberta",
    )


# The original README's presets, with the reduction it claimed for each. The true sizes are
# computed by `accounting.size_report`, never copied from here.
ORIGINAL_PRESETS: dict[str, dict] = {
    "original-75%": {"n_layers": 18, "n_heads": 12, "intermediate_size": 3072, "claimed_reduction": 0.75},
    "original-60%": {"n_layers": 20, "n_heads": 14, "intermediate_size": 3584, "claimed_reduction": 0.60},
    "original-50%": {"n_layers": 21, "n_heads": 15, "intermediate_size": 3840, "claimed_reduction": 0.50},
}
