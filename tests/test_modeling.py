"""The prunable encoder computes what Hugging Face's BERT / RoBERTa / XLM-R compute, and its gates
do what the pruning relies on: gate 0 removes a layer, all-ones gates change nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_parameters, tiny_hf_config

from prune_engine.modeling_prunable_encoder import (
    EncoderGates,
    PrunableEncoderConfig,
    PrunableEncoderModel,
)
from prune_engine.sources import encoder_config_from_hf

HF_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}


def padded_batch(vocab_size: int, pad_token_id: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of lengths 12, 8 and 5: two of them padded."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = pad_token_id
    return ids, mask


def tiny_pair(kind: str, seed: int = 0, **overrides):
    """A random stock HF model and our encoder loaded from its state dict."""
    import transformers

    hf_config = tiny_hf_config(kind, **overrides)
    hf_model = getattr(transformers, HF_CLASSES[kind])(hf_config, add_pooling_layer=False)
    randomize_parameters(hf_model, seed)
    ours = PrunableEncoderModel(encoder_config_from_hf(hf_config.to_dict()))
    ours.load_state_dict(hf_model.state_dict(), strict=True)
    return hf_model.eval(), ours.eval(), hf_config


def tiny_encoder(seed: int = 0, **config) -> PrunableEncoderModel:
    defaults = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = PrunableEncoderModel(PrunableEncoderConfig(**{**defaults, **config}))
    return randomize_parameters(model, seed).eval()


def without_layer(model: PrunableEncoderModel, removed: int) -> PrunableEncoderModel:
    """The same weights with one layer deleted, built by hand from the state dict."""
    config = model.config
    keep = [i for i in range(config.num_hidden_layers) if i != removed]
    smaller = PrunableEncoderModel(
        PrunableEncoderConfig(
            **{
                **config.to_dict(),
                "heads_per_layer": [config.heads_per_layer[i] for i in keep],
                "intermediate_sizes": [config.intermediate_sizes[i] for i in keep],
            }
        )
    )
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer.") :].split(".", 1)
            if int(index) == removed:
                continue
            key = f"encoder.layer.{keep.index(int(index))}.{rest}"
        state[key] = value
    smaller.load_state_dict(state, strict=True)
    return smaller.eval()


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
def test_tiny_random_models_equal_hugging_face(kind):
    hf_model, ours, hf_config = tiny_pair(kind)
    ids, mask = padded_batch(hf_config.vocab_size, hf_config.pad_token_id)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        kwargs["token_type_ids"] = (torch.arange(12) >= 6).long().expand(3, 12)  # both segment types used
    with torch.no_grad():
        expected = hf_model(**kwargs).last_hidden_state
        actual = ours(**kwargs).last_hidden_state
    assert expected.abs().mean() > 0.1  # not a degenerate model
    assert (actual - expected)[mask.bool()].abs().max() < 1e-5
    # Every layer, not just the last, agrees.
    with torch.no_grad():
        hf_states = hf_model(**kwargs, output_hidden_states=True).hidden_states
        our_states = ours(**kwargs, output_hidden_states=True).hidden_states
    assert len(our_states) == hf_config.num_hidden_layers + 1
    for theirs, mine in zip(hf_states, our_states, strict=True):
        assert (theirs - mine)[mask.bool()].abs().max() < 1e-5


def test_roberta_family_positions_skip_padding():
    _, ours, _ = tiny_pair("xlm-roberta")
    ids, _ = padded_batch(120, pad_token_id=1)
    positions = ours.embeddings.position_ids(ids)
    assert positions[0].tolist() == list(range(2, 14))
    assert positions[2].tolist() == [2, 3, 4, 5, 6] + [1] * 7


def test_real_minilm_equals_hugging_face_bert(minilm, real_sentences):
    from transformers import BertModel

    from prune_engine.sources import resolve_model_dir

    hf_model = BertModel.from_pretrained(resolve_model_dir("minilm"), add_pooling_layer=False).eval()
    features = minilm.tokenize(real_sentences)
    mask = features["attention_mask"].bool()
    assert (~mask).any(), "the batch must contain padding"
    with torch.no_grad():
        expected = hf_model(**features).last_hidden_state
        actual = minilm.encoder(**features).last_hidden_state
    assert (actual - expected)[mask].abs().max() < 1e-5


def test_layer_gate_zero_makes_the_layer_the_identity():
    model = tiny_encoder(heads_per_layer=[4, 2, 3], intermediate_sizes=[64, 40, 16])
    ids, mask = padded_batch(100, 0)
    n = model.config.num_hidden_layers
    for removed in range(n):
        gates = EncoderGates(layer=[torch.tensor(0.0 if i == removed else 1.0) for i in range(n)])
        with torch.no_grad():
            gated = model(ids, mask, gates=gates).last_hidden_state
            reference = without_layer(model, removed)(ids, mask).last_hidden_state
            full = model(ids, mask).last_hidden_state
        assert (gated - reference)[mask.bool()].abs().max() < 1e-5
        assert (gated - full)[mask.bool()].abs().max() > 1e-2  # the layer did matter


def test_layer_gate_interpolates_between_identity_and_layer():
    model = tiny_encoder(num_hidden_layers=1)
    ids, mask = padded_batch(100, 0)
    with torch.no_grad():
        embedded = model.embeddings(ids)
        full = model(ids, mask).last_hidden_state
        half = model(ids, mask, gates=EncoderGates(layer=[torch.tensor(0.25)])).last_hidden_state
    assert torch.allclose(half, embedded + 0.25 * (full - embedded), atol=1e-6)


def test_all_ones_gates_equal_no_gates():
    model = tiny_encoder(heads_per_layer=[4, 1, 3], intermediate_sizes=[64, 10, 33])
    config = model.config
    ids, mask = padded_batch(100, 0)
    gates = EncoderGates(
        layer=[torch.tensor(1.0) for _ in range(config.num_hidden_layers)],
        heads=[torch.ones(h) for h in config.heads_per_layer],
        ffn=[torch.ones(f) for f in config.intermediate_sizes],
    )
    with torch.no_grad():
        ungated = model(ids, mask).last_hidden_state
        gated = model(ids, mask, gates=gates).last_hidden_state
    assert (gated - ungated).abs().max() < 1e-6


def test_head_and_neuron_gates_change_the_output():
    model = tiny_encoder()
    config = model.config
    ids, mask = padded_batch(100, 0)
    heads = [torch.ones(h) for h in config.heads_per_layer]
    heads[0][1] = 0.0
    ffn = [torch.ones(f) for f in config.intermediate_sizes]
    ffn[2][:5] = 0.0
    with torch.no_grad():
        ungated = model(ids, mask).last_hidden_state
        head_gated = model(ids, mask, gates=EncoderGates(heads=heads)).last_hidden_state
        ffn_gated = model(ids, mask, gates=EncoderGates(ffn=ffn)).last_hidden_state
    assert (head_gated - ungated).abs().max() > 1e-2
    assert (ffn_gated - ungated).abs().max() > 1e-2


def test_layer_without_heads_still_applies_output_bias_and_layernorm():
    model = tiny_encoder(heads_per_layer=[4, 0, 2], intermediate_sizes=[64, 48, 0])
    layer = model.encoder.layer[1]
    assert layer.attention.self.query.weight.shape == (0, 32)
    assert layer.attention.output.dense.weight.shape == (32, 0)
    ids, mask = padded_batch(100, 0)
    with torch.no_grad():
        states = model(ids, mask, output_hidden_states=True).hidden_states
        before, after = states[1], states[2]
        # Attention block with no heads: LayerNorm(output bias + residual).
        attention_norm = layer.attention.output.LayerNorm
        attended = attention_norm(before + layer.attention.output.dense.bias)
        intermediate = torch.nn.functional.gelu(attended @ layer.intermediate.dense.weight.T + layer.intermediate.dense.bias)
        expected = layer.output.LayerNorm(intermediate @ layer.output.dense.weight.T + layer.output.dense.bias + attended)
        assert (after - expected).abs().max() < 1e-5
        assert (attended - attention_norm(before)).abs().max() > 1e-2  # the bias is not negligible here
        # A layer with no FFN neuron: LayerNorm(down-projection bias + attended).
        last = model.encoder.layer[2]
        attended_last = last.attention(states[2], torch.zeros(3, 1, 1, 12).masked_fill(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min))
        expected_last = last.output.LayerNorm(last.output.dense.bias + attended_last)
        assert (states[3] - expected_last).abs().max() < 1e-5


def test_zero_head_gates_equal_a_layer_built_without_heads():
    """Masking every head of a layer and slicing them all away give the same model."""
    full = tiny_encoder(heads_per_layer=[4, 4], intermediate_sizes=[64, 64], num_hidden_layers=2)
    no_heads = PrunableEncoderModel(PrunableEncoderConfig(**{**full.config.to_dict(), "heads_per_layer": [4, 0]}))
    state = {
        key: value
        for key, value in full.state_dict().items()
        if not key.startswith("encoder.layer.1.attention.self.") and key != "encoder.layer.1.attention.output.dense.weight"
    }
    for name in ("query", "key", "value"):
        state[f"encoder.layer.1.attention.self.{name}.weight"] = torch.zeros(0, 32)
        state[f"encoder.layer.1.attention.self.{name}.bias"] = torch.zeros(0)
    state["encoder.layer.1.attention.output.dense.weight"] = torch.zeros(32, 0)
    no_heads.load_state_dict(state, strict=True)
    no_heads.eval()
    ids, mask = padded_batch(100, 0)
    gates = EncoderGates(heads=[torch.ones(4), torch.zeros(4)])
    with torch.no_grad():
        gated = full(ids, mask, gates=gates).last_hidden_state
        sliced = no_heads(ids, mask).last_hidden_state
    assert (gated - sliced).abs().max() < 1e-5


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    model = tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, heads_per_layer=[4, 2, 3])
    config = model.config
    ids, mask = padded_batch(100, 0)

    def run(checkpointing: bool):
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        model.train()
        gates = EncoderGates(
            layer=[torch.tensor(0.9, requires_grad=True) for _ in range(config.num_hidden_layers)],
            heads=[torch.full((h,), 0.8, requires_grad=True) for h in config.heads_per_layer],
            ffn=[torch.full((f,), 0.7, requires_grad=True) for f in config.intermediate_sizes],
        )
        torch.manual_seed(1234)  # same dropout masks in both runs
        out = model(ids, mask, gates=gates).last_hidden_state
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        gate_grads = [g.grad.clone() for g in gates.layer + gates.heads + gates.ffn]
        return out.detach(), grads, gate_grads

    plain_out, plain_grads, plain_gate_grads = run(False)
    ckpt_out, ckpt_grads, ckpt_gate_grads = run(True)
    assert model.encoder.gradient_checkpointing
    model.gradient_checkpointing_disable()
    model.eval()
    assert (plain_out - ckpt_out).abs().max() < 1e-6
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[name], atol=1e-6), name
    assert any(g.abs().max() > 0 for g in plain_gate_grads)
    for plain, ckpt in zip(plain_gate_grads, ckpt_gate_grads, strict=True):
        assert torch.allclose(plain, ckpt, atol=1e-6)


def test_config_rejects_inconsistent_structures():
    with pytest.raises(ValueError, match="one entry per layer"):
        PrunableEncoderConfig(hidden_size=32, num_attention_heads=4, heads_per_layer=[4, 4], intermediate_sizes=[8])
    with pytest.raises(ValueError, match="more than num_attention_heads"):
        PrunableEncoderConfig(hidden_size=32, num_attention_heads=4, heads_per_layer=[5], intermediate_sizes=[8])
    with pytest.raises(ValueError, match="non-negative"):
        PrunableEncoderConfig(hidden_size=32, num_attention_heads=4, heads_per_layer=[-1], intermediate_sizes=[8])
