"""Parameter and FLOP accounting equals real models and hand counts, BGE-M3's included."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_hf_config

from prune_engine.accounting import Structure, count_parameters, flops_per_token, size_report
from prune_engine.modeling_prunable_encoder import PrunableEncoderConfig, PrunableEncoderModel
from prune_engine.presets import ORIGINAL_PRESETS, bge_m3_config
from prune_engine.sources import encoder_config_from_hf

UNEVEN_STRUCTURES = [
    ((4, 4, 4), (80, 80, 80)),  # the full model
    ((4, 0, 2), (80, 37, 1)),  # a layer with no heads
    ((1, 3), (0, 80)),  # a layer with no FFN neuron
    ((0,), (0,)),  # one layer that keeps nothing but its biases and LayerNorms
    ((), ()),  # every layer removed
    ((2, 4, 1, 3), (5, 0, 80, 17)),
]


def real_count(config: PrunableEncoderConfig, heads, ffn, vocab_size) -> int:
    model = PrunableEncoderModel(
        PrunableEncoderConfig(
            **{**config.to_dict(), "heads_per_layer": list(heads), "intermediate_sizes": list(ffn), "vocab_size": vocab_size}
        )
    )
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("heads, ffn", UNEVEN_STRUCTURES)
@pytest.mark.parametrize("vocab_size", [120, 57])
def test_count_parameters_equals_a_real_model(kind, heads, ffn, vocab_size):
    config = encoder_config_from_hf(tiny_hf_config(kind).to_dict())
    counts = count_parameters(config, Structure(heads, ffn, vocab_size))
    assert counts.total == real_count(config, heads, ffn, vocab_size)
    assert counts.output_heads == 0


def test_count_parameters_splits_embeddings_and_encoder():
    config = encoder_config_from_hf(tiny_hf_config("xlm-roberta").to_dict())
    model = PrunableEncoderModel(config)
    counts = count_parameters(config)
    assert counts.embeddings == sum(p.numel() for p in model.embeddings.parameters())
    assert counts.encoder == sum(p.numel() for p in model.encoder.parameters())
    with_heads = count_parameters(config, output_head_parameters=33 + 1056)
    assert with_heads.total == counts.total + 1089
    assert with_heads.as_dict()["total"] == with_heads.total


def test_count_parameters_with_explicit_head_size():
    # heads * head_size need not equal hidden_size in a config of our own.
    config = PrunableEncoderConfig(
        vocab_size=50, hidden_size=24, num_attention_heads=3, attention_head_size=5, intermediate_size=7,
        heads_per_layer=[3, 1], intermediate_sizes=[7, 2], max_position_embeddings=16,
    )
    assert count_parameters(config).total == sum(p.numel() for p in PrunableEncoderModel(config).parameters())


# --- BGE-M3 (XLM-RoBERTa-large): 24 layers, hidden 1024, 16 heads of 64, FFN 4096, vocab 250,002,
# 8,194 positions, one token type. Expected values below are written out from the weight shapes.
HIDDEN, VOCAB, POSITIONS, HEAD = 1024, 250002, 8194, 64


def hand_layer(n_heads: int, ffn: int) -> int:
    inner = n_heads * HEAD
    qkv = 3 * (HIDDEN * inner + inner)  # three Linear(1024, inner)
    attention_out = inner * HIDDEN + HIDDEN  # Linear(inner, 1024)
    up = HIDDEN * ffn + ffn  # Linear(1024, ffn)
    down = ffn * HIDDEN + HIDDEN  # Linear(ffn, 1024)
    layer_norms = 2 * 2 * HIDDEN
    return qkv + attention_out + up + down + layer_norms


HAND_EMBEDDINGS = (VOCAB + POSITIONS + 1) * HIDDEN + 2 * HIDDEN


def test_bge_m3_full_size():
    counts = count_parameters(bge_m3_config())
    assert counts.embeddings == 264_395_776 == HAND_EMBEDDINGS
    assert counts.encoder == 302_309_376 == 24 * hand_layer(16, 4096)
    assert counts.total == 566_705_152


def test_original_75_percent_preset_is_a_23_percent_cut():
    preset = ORIGINAL_PRESETS["original-75%"]
    assert (preset["n_layers"], preset["n_heads"], preset["intermediate_size"]) == (18, 12, 3072)
    report = size_report(bge_m3_config(), Structure.uniform(18, 12, 3072, VOCAB))
    assert report.after.total == 434_472_448
    assert report.after.encoder == 18 * hand_layer(12, 3072) == 170_076_672
    assert report.total_reduction == pytest.approx(0.2333, abs=5e-4)
    assert report.encoder_reduction == pytest.approx(0.4374, abs=5e-4)
    assert report.total_reduction < preset["claimed_reduction"]  # the claim was wrong


@pytest.mark.parametrize(
    "name, layers, heads, ffn",
    [("original-60%", 20, 14, 3584), ("original-50%", 21, 15, 3840)],
)
def test_other_original_presets(name, layers, heads, ffn):
    preset = ORIGINAL_PRESETS[name]
    assert (preset["n_layers"], preset["n_heads"], preset["intermediate_size"]) == (layers, heads, ffn)
    report = size_report(bge_m3_config(), Structure.uniform(layers, heads, ffn, VOCAB))
    expected_encoder = layers * hand_layer(heads, ffn)
    assert report.after.encoder == expected_encoder
    assert report.after.total == HAND_EMBEDDINGS + expected_encoder
    assert report.total_reduction == pytest.approx(1 - (HAND_EMBEDDINGS + expected_encoder) / 566_705_152)
    assert report.encoder_reduction == pytest.approx(1 - expected_encoder / 302_309_376)


def test_other_original_presets_hand_values():
    # Worked by hand. 14 heads (inner 896): Q,K,V 3*(1024*896+896) = 2,755,200; output 896*1024+1024
    # = 918,528; up 1024*3584+3584 = 3,673,600; down 3584*1024+1024 = 3,671,040; LayerNorms 4,096.
    assert hand_layer(14, 3584) == 11_022_464
    # 15 heads (inner 960): 2,952,000 + 984,064 + 3,936,000 + 3,933,184 + 4,096.
    assert hand_layer(15, 3840) == 11_809_344
    config = bge_m3_config()
    assert count_parameters(config, Structure.uniform(20, 14, 3584, VOCAB)).total == 264_395_776 + 220_449_280
    assert count_parameters(config, Structure.uniform(21, 15, 3840, VOCAB)).total == 512_392_000


def test_bge_m3_shape_counts_equal_a_real_model_scaled_down():
    """The same formula on BGE-M3's shape with a tiny vocabulary and few positions, checked
    against an instantiated model (the full 568M would be slow to build)."""
    config = bge_m3_config()
    config.vocab_size, config.max_position_embeddings = 10, 12
    small = PrunableEncoderConfig(**{**config.to_dict(), "heads_per_layer": [16, 3], "intermediate_sizes": [4096, 100]})
    with torch.device("meta"):
        model = PrunableEncoderModel(small)
    assert count_parameters(small).total == sum(p.numel() for p in model.parameters())


def test_flops_per_token_hand_count():
    config = PrunableEncoderConfig(
        vocab_size=10, hidden_size=8, num_attention_heads=4, intermediate_size=6, max_position_embeddings=16,
        heads_per_layer=[4, 1, 0], intermediate_sizes=[6, 3, 2],
    )
    seq = 5
    # head size 2. Layer 0: inner 8. Q,K,V: 3 * 2*8*8 = 384; output 2*8*8 = 128; scores + weighted sum
    # 2 * 2*5*8 = 160; FFN 2 * 2*8*6 = 192  -> 864.
    # Layer 1: inner 2. 3*2*8*2 = 96; 2*2*8 = 32; 2*2*5*2 = 40; 2*2*8*3 = 96 -> 264.
    # Layer 2: no heads. FFN 2*2*8*2 = 64 -> 64.
    assert flops_per_token(config, None, seq) == 864 + 264 + 64
    assert flops_per_token(config, Structure((4,), (6,), 10), seq) == 864
    assert flops_per_token(config, Structure((), (), 10), seq) == 0


def test_size_report_full_vs_full():
    config = bge_m3_config()
    report = size_report(config, Structure.of(config), sequence_length=256)
    assert report.predicted_speedup == 1.0
    assert report.total_reduction == 0.0 and report.encoder_reduction == 0.0
    data = report.as_dict()
    assert data["parameters_before"] == data["parameters_after"]
    assert data["flops_per_token_before"] == flops_per_token(config, None, 256) > 0


def test_size_report_speedup_of_half_the_layers_is_two():
    config = bge_m3_config()
    report = size_report(config, Structure.uniform(12, 16, 4096, VOCAB), sequence_length=512)
    assert report.predicted_speedup == pytest.approx(2.0)
    assert report.after.embeddings == report.before.embeddings


def test_structure_describe():
    assert Structure.uniform(18, 12, 3072, VOCAB).describe() == "18 layers, 12 heads, FFN 3072, vocab 250,002"
    assert Structure((4, 0, 2), (80, 37, 1), 120).describe() == "3 layers, 0-4 heads, FFN 1-80, vocab 120"
    with pytest.raises(ValueError):
        Structure((1, 2), (3,), 10)
