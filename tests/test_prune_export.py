"""Physical pruning computes what the masked model computes; exports load offline with stock tools
(transformers, sentence-transformers, this project) and give the same embeddings; exports are
atomic."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_uneven_masks

from prune_engine import export as export_module
from prune_engine.accounting import count_parameters
from prune_engine.export import ExportError, export_embedder, needs_remote_code, pruning_info
from prune_engine.l0 import StructureMasks
from prune_engine.prune import kept_indices, prune_embedder
from prune_engine.sources import load_embedder

TOLERANCE = 1e-4


def masked_output(embedder, features, masks: StructureMasks):
    with torch.no_grad():
        return embedder(features, gates=masks.as_gates())


def stock_masks(config, dropped_layers: list[int], ffn_width: int | None = None) -> StructureMasks:
    """Only whole layers dropped (and optionally every layer cut to the same FFN width): a
    structure a stock BERT / XLM-R config can express."""
    width = ffn_width or config.intermediate_size
    return StructureMasks(
        layers=torch.tensor([i not in dropped_layers for i in range(config.num_hidden_layers)]),
        heads=[torch.ones(h, dtype=torch.bool) for h in config.heads_per_layer],
        ffn=[torch.arange(f) < width for f in config.intermediate_sizes],
    )


def export_pruned(embedder, masks, destination, source="source-model"):
    pruned = prune_embedder(embedder, masks).eval()
    info = pruning_info(pruned, source, embedder.config, kept_indices(masks))
    export_embedder(pruned, destination, info)
    return pruned, info


# --- pruning ------------------------------------------------------------------------------------


def test_pruned_minilm_equals_masked_model(minilm, real_sentences):
    masks = random_uneven_masks(minilm.config, seed=0, drop_layer=2, empty_heads_layer=4)
    features = minilm.tokenize(real_sentences)
    assert (features["attention_mask"] == 0).any()
    masked = masked_output(minilm, features, masks)
    with torch.no_grad():
        unpruned = minilm(features)
    pruned = prune_embedder(minilm, masks).eval()
    with torch.no_grad():
        out = pruned(features)
    mask = features["attention_mask"].bool()
    assert (out.dense - masked.dense).abs().max() < TOLERANCE
    assert (out.token_states - masked.token_states)[mask].abs().max() < TOLERANCE
    assert (unpruned.dense - masked.dense).abs().max() > 1e-2  # the masks really changed the model
    assert pruned.config.heads_per_layer == [1, 2, 4, 0, 6] and pruned.config.num_hidden_layers == 5
    # The original stays untouched (it is the teacher).
    assert minilm.config.num_hidden_layers == 6 and minilm.config.heads_per_layer == [12] * 6
    with torch.no_grad():
        assert torch.equal(minilm(features).dense, unpruned.dense)


def test_pruned_tiny_xlmr_equals_masked_model(tiny_xlmr_embedder, multilingual_sentences):
    embedder = tiny_xlmr_embedder(seed=0)
    masks = random_uneven_masks(embedder.config, seed=1, drop_layer=1, empty_heads_layer=2)
    features = embedder.tokenize(multilingual_sentences)
    assert (features["attention_mask"] == 0).any()
    masked = masked_output(embedder, features, masks)
    with torch.no_grad():
        unpruned = embedder(features)
        out = prune_embedder(embedder, masks).eval()(features)
    assert (out.dense - masked.dense).abs().max() < TOLERANCE
    assert (out.sparse_weights - masked.sparse_weights).abs().max() < TOLERANCE
    assert (out.colbert_vectors - masked.colbert_vectors).abs().max() < TOLERANCE
    assert (unpruned.dense - masked.dense).abs().max() > 1e-2


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_parameter_count_equals_accounting(minilm, tiny_xlmr_embedder, seed):
    for embedder in (minilm, tiny_xlmr_embedder(seed=seed)):
        masks = random_uneven_masks(embedder.config, seed=seed, drop_layer=seed, empty_heads_layer=2)
        pruned = prune_embedder(embedder, masks)
        structure = masks.kept_structure(embedder.config.vocab_size)
        expected = count_parameters(embedder.config, structure)
        assert sum(p.numel() for p in pruned.encoder.parameters()) == expected.total
        assert sum(p.numel() for p in pruned.encoder.encoder.parameters()) == expected.encoder
        assert expected.total < count_parameters(embedder.config).total


def test_kept_indices_name_source_layers_and_heads():
    masks = StructureMasks(
        layers=torch.tensor([True, False, True]),
        heads=[torch.tensor([True, False]), torch.tensor([True, True]), torch.tensor([False, True])],
        ffn=[torch.tensor([True, True, False]), torch.tensor([True, True, True]), torch.tensor([False, False, True])],
    )
    assert kept_indices(masks) == [
        {"source_layer": 0, "heads": [0], "ffn_neurons": 2},
        {"source_layer": 2, "heads": [1], "ffn_neurons": 1},
    ]


# --- exports that need remote code --------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven_xlmr(tiny_xlmr_embedder, multilingual_sentences, tmp_path_factory):
    """One uneven tiny XLM-R export (with BGE-M3 heads), shared by the tests that read it back:
    each read of the 250k-piece tokenizer costs seconds."""
    embedder = tiny_xlmr_embedder(seed=3)
    masks = random_uneven_masks(embedder.config, seed=3, drop_layer=1, empty_heads_layer=0)
    destination = tmp_path_factory.mktemp("exports") / "uneven-xlmr"
    pruned, info = export_pruned(embedder, masks, destination, source="BAAI/bge-m3")
    features = embedder.tokenize(multilingual_sentences)
    return {
        "embedder": embedder,
        "masks": masks,
        "pruned": pruned,
        "dir": destination,
        "features": features,
        "masked": masked_output(embedder, features, masks),
    }


def test_uneven_export_needs_remote_code(uneven_xlmr):
    destination = uneven_xlmr["dir"]
    assert needs_remote_code(uneven_xlmr["pruned"].config)
    config = json.loads((destination / "config.json").read_text())
    # The source's stock model_type and remote code for AutoModel alone: AutoConfig and AutoTokenizer
    # read it with stock classes, run nothing and ask nothing (tests/test_reliability.py loads it).
    assert config["model_type"] == "xlm-roberta"
    assert config["auto_map"] == {"AutoModel": "modeling_prunable_encoder.PrunableEncoderModel"}
    assert config["heads_per_layer"] == [0, 3]
    assert (destination / "modeling_prunable_encoder.py").read_bytes() == (
        Path(export_module.__file__).with_name("modeling_prunable_encoder.py").read_bytes()
    )
    assert json.loads((destination / "pruning_info.json").read_text())["needs_trust_remote_code"] is True
    assert "trust_remote_code=True" in (destination / "README.md").read_text()


def test_uneven_export_loads_with_transformers_auto_model(uneven_xlmr):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(uneven_xlmr["dir"], trust_remote_code=True).eval()
    assert type(model).__name__ == "PrunableEncoderModel"
    features, mask = uneven_xlmr["features"], uneven_xlmr["features"]["attention_mask"].bool()
    with torch.no_grad():
        states = model(**features).last_hidden_state
    assert (states - uneven_xlmr["masked"].token_states)[mask].abs().max() < TOLERANCE


def test_uneven_export_loads_with_sentence_transformers(uneven_xlmr, multilingual_sentences):
    from sentence_transformers import SentenceTransformer

    sentence_model = SentenceTransformer(str(uneven_xlmr["dir"]), trust_remote_code=True, device="cpu")
    vectors = sentence_model.encode(multilingual_sentences, convert_to_tensor=True)
    masked = uneven_xlmr["masked"].dense
    assert vectors.shape == masked.shape
    assert (vectors - masked).abs().max() < TOLERANCE


def test_uneven_minilm_export_with_sentence_transformers(minilm, real_sentences, tmp_path):
    from sentence_transformers import SentenceTransformer

    masks = random_uneven_masks(minilm.config, seed=5, drop_layer=3, empty_heads_layer=1)
    destination = tmp_path / "uneven-minilm"
    export_pruned(minilm, masks, destination, source="minilm")
    features = minilm.tokenize(real_sentences)
    masked = masked_output(minilm, features, masks)
    sentence_model = SentenceTransformer(str(destination), trust_remote_code=True, device="cpu")
    assert sentence_model.max_seq_length == 256
    vectors = sentence_model.encode(real_sentences, convert_to_tensor=True)
    assert (vectors - masked.dense).abs().max() < TOLERANCE
    # Our own loader reads it back too: mean pooling, normalised.
    reloaded = load_embedder(str(destination))
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_length) == ("mean", True, 256)
    with torch.no_grad():
        assert (reloaded(features).dense - masked.dense).abs().max() < TOLERANCE


# --- exports a stock config expresses -----------------------------------------------------------


def test_stock_xlmr_export_loads_without_remote_code(tiny_xlmr_embedder, multilingual_sentences, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, XLMRobertaModel

    embedder = tiny_xlmr_embedder(seed=4)
    masks = stock_masks(embedder.config, dropped_layers=[1], ffn_width=20)
    destination = tmp_path / "stock-xlmr"
    pruned, _ = export_pruned(embedder, masks, destination)
    assert not needs_remote_code(pruned.config)

    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta"
    assert "auto_map" not in config
    assert (config["num_hidden_layers"], config["intermediate_size"], config["num_attention_heads"]) == (2, 20, 4)
    assert (config["pad_token_id"], config["type_vocab_size"], config["max_position_embeddings"]) == (1, 1, 66)
    assert not (destination / "modeling_prunable_encoder.py").exists()
    assert "trust_remote_code" not in (destination / "README.md").read_text()

    features = embedder.tokenize(multilingual_sentences)
    masked = masked_output(embedder, features, masks)
    mask = features["attention_mask"].bool()
    model = AutoModel.from_pretrained(destination).eval()
    assert isinstance(model, XLMRobertaModel)
    with torch.no_grad():
        states = model(**features).last_hidden_state
    assert (states - masked.token_states)[mask].abs().max() < TOLERANCE

    vectors = SentenceTransformer(str(destination), device="cpu").encode(multilingual_sentences, convert_to_tensor=True)
    assert (vectors - masked.dense).abs().max() < TOLERANCE


def test_stock_bert_export_loads_without_remote_code(minilm, real_sentences, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, BertModel

    masks = stock_masks(minilm.config, dropped_layers=[0, 4])
    destination = tmp_path / "stock-minilm"
    export_pruned(minilm, masks, destination, source="minilm")
    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 4
    assert config["architectures"] == ["BertModel"]
    assert not (destination / "modeling_prunable_encoder.py").exists()

    features = minilm.tokenize(real_sentences)
    masked = masked_output(minilm, features, masks)
    model = AutoModel.from_pretrained(destination).eval()
    assert isinstance(model, BertModel)
    with torch.no_grad():
        states = model(**features).last_hidden_state
    assert (states - masked.token_states)[features["attention_mask"].bool()].abs().max() < TOLERANCE
    vectors = SentenceTransformer(str(destination), device="cpu").encode(real_sentences, convert_to_tensor=True)
    assert (vectors - masked.dense).abs().max() < TOLERANCE


# --- pruning_info.json and BGE-M3 heads ---------------------------------------------------------


def test_pruning_info_records_source_structure_and_counts(uneven_xlmr):
    embedder, masks, pruned, destination = (uneven_xlmr[k] for k in ("embedder", "masks", "pruned", "dir"))
    info = json.loads((destination / "pruning_info.json").read_text())
    structure = masks.kept_structure(250002)
    heads = 32 + 1 + 32 * 32 + 32  # sparse_linear + colbert_linear
    assert info["source_model"] == "BAAI/bge-m3"
    assert info["heads_per_layer"] == list(structure.heads_per_layer) == [0, 3]
    assert info["intermediate_sizes"] == list(structure.intermediate_sizes) == [14, 40]
    assert [layer["source_layer"] for layer in info["kept_layers"]] == [0, 2]
    assert info["kept_layers"][1]["heads"] == torch.nonzero(masks.heads[2]).flatten().tolist()
    before = count_parameters(embedder.config, None, heads)
    after = count_parameters(embedder.config, structure, heads)
    assert info["parameters_before"] == before.as_dict()
    assert info["parameters_after"] == after.as_dict()
    assert info["parameters_after"]["total"] == sum(p.numel() for p in pruned.parameters())
    assert info["parameters_before"]["total"] == sum(p.numel() for p in embedder.parameters())
    assert f"{after.total:,}" in (destination / "README.md").read_text()


def test_bge_m3_heads_are_exported_and_reload(uneven_xlmr, multilingual_sentences):
    destination = uneven_xlmr["dir"]
    assert (destination / "sparse_linear.pt").is_file() and (destination / "colbert_linear.pt").is_file()
    reloaded = load_embedder(str(destination))
    assert reloaded.has_multi_output
    assert (reloaded.pooling, reloaded.normalize) == ("cls", True)
    masked = uneven_xlmr["masked"]
    with torch.no_grad():
        out = reloaded(uneven_xlmr["features"])
    assert (out.dense - masked.dense).abs().max() < TOLERANCE
    assert (out.sparse_weights - masked.sparse_weights).abs().max() < TOLERANCE
    assert (out.colbert_vectors - masked.colbert_vectors).abs().max() < TOLERANCE
    assert masked.sparse_weights.max() > 0  # the sparse head is not trivially zero
    # FlagEmbedding's conventions: no weight and a zero vector on padding, unit token vectors elsewhere.
    mask = uneven_xlmr["features"]["attention_mask"].bool()
    assert (~mask).any()
    assert (out.sparse_weights[~mask] == 0).all()
    assert (out.colbert_vectors[~mask[:, 1:]] == 0).all()
    norms = out.colbert_vectors[mask[:, 1:]].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    multi = reloaded.encode_multi(multilingual_sentences[:2])
    assert all(isinstance(w, dict) and w for w in multi["sparse"]) and multi["colbert"][0].shape[1] == 32


def test_export_without_heads_writes_no_head_files(tiny_xlmr_embedder, tmp_path):
    embedder = tiny_xlmr_embedder(seed=8, with_heads=False)
    masks = stock_masks(embedder.config, dropped_layers=[])
    export_pruned(embedder, masks, tmp_path / "no-heads")
    assert (tmp_path / "no-heads" / "model.safetensors").is_file()
    assert not (tmp_path / "no-heads" / "sparse_linear.pt").exists()
    assert not (tmp_path / "no-heads" / "colbert_linear.pt").exists()


# --- atomic writes ------------------------------------------------------------------------------


def leftovers(parent) -> list[str]:
    return [name for name in os.listdir(parent) if ".partial-" in name]


def test_export_to_an_existing_directory_refuses_then_overwrites(tiny_xlmr_embedder, tmp_path):
    embedder = tiny_xlmr_embedder(seed=9, with_heads=False)
    masks = stock_masks(embedder.config, dropped_layers=[2])
    pruned = prune_embedder(embedder, masks)
    info = pruning_info(pruned, "tiny", embedder.config)
    destination = tmp_path / "existing"
    destination.mkdir()
    (destination / "keep-me.txt").write_text("old contents")
    with pytest.raises(ExportError, match="already exists"):
        export_embedder(pruned, destination, info)
    assert os.listdir(destination) == ["keep-me.txt"]
    assert (destination / "keep-me.txt").read_text() == "old contents"
    assert leftovers(tmp_path) == []

    # Replacing is for a previous export only: a folder without pruning_info.json (a workspace, a run
    # directory, anything of the user's) is never removed, even when replacing is allowed.
    with pytest.raises(ExportError, match="not an export this tool wrote"):
        export_embedder(pruned, destination, info, overwrite=True)
    assert os.listdir(destination) == ["keep-me.txt"] and leftovers(tmp_path) == []

    previous = tmp_path / "previous"
    export_embedder(pruned, previous, {**info, "note": "first"})
    export_embedder(pruned, previous, {**info, "note": "second"}, overwrite=True)
    assert json.loads((previous / "pruning_info.json").read_text())["note"] == "second"
    assert (previous / "config.json").is_file() and (previous / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []
    # Every file of the export is readable like the others (safetensors alone would be 0600).
    modes = {(path.stat().st_mode & 0o777) for path in previous.rglob("*") if path.is_file()}
    assert len(modes) == 1, modes

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_embedder(pruned, a_file, info, overwrite=True)
    assert a_file.read_text() == "x"


def test_interrupted_export_leaves_nothing_behind(tiny_xlmr_embedder, tmp_path, monkeypatch):
    embedder = tiny_xlmr_embedder(seed=10, with_heads=False)
    pruned = prune_embedder(embedder, stock_masks(embedder.config, dropped_layers=[0]))
    info = pruning_info(pruned, "tiny", embedder.config)

    previous = tmp_path / "previous"
    export_embedder(pruned, previous, {**info, "note": "intact"})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "save_file", full_disk)
    destination = tmp_path / "out" / "interrupted"
    with pytest.raises(ExportError, match=r"could not write the export .*interrupted: No space left on device"):
        export_embedder(pruned, destination, info)
    assert not destination.exists()
    assert leftovers(destination.parent) == []

    # An interrupted overwrite keeps the previous export intact.
    with pytest.raises(ExportError, match="No space left on device"):
        export_embedder(pruned, previous, info, overwrite=True)
    assert json.loads((previous / "pruning_info.json").read_text())["note"] == "intact"
    assert leftovers(tmp_path) == []


def test_a_staging_folder_left_by_a_killed_export_is_cleaned_by_the_next(tiny_xlmr_embedder, tmp_path):
    """A process killed mid-export leaves `.name.partial-<pid>-*`; the next export there removes it,
    but never one whose process is alive (it is still writing)."""
    embedder = tiny_xlmr_embedder(seed=11, with_heads=False)
    pruned = prune_embedder(embedder, stock_masks(embedder.config, dropped_layers=[0]))
    info = pruning_info(pruned, "tiny", embedder.config)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.partial-{dead.stdout.strip()}-0badc0de"
    live = tmp_path / f".model.partial-{os.getpid()}-0000beef"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    export_embedder(pruned, tmp_path / "model", info)
    assert not stale.exists() and live.exists()
