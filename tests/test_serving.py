"""ONNX serving exports: the graph computes what the PyTorch export computes (stock and uneven
structures, BERT and XLM-R), int8 stays close, `OnnxEmbedder` plugs into evaluation, the quality
gate decides both ways, and bad input or a failed export leaves a clear error and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_uneven_masks

from prune_engine import serving
from prune_engine.data import ScoredPairs, load_eval_data
from prune_engine.evaluate import evaluate
from prune_engine.export import export_embedder, needs_remote_code, pruning_info
from prune_engine.l0 import StructureMasks
from prune_engine.prune import kept_indices, prune_embedder
from prune_engine.serving import OnnxEmbedder, ServingError, export_onnx, quality_gate
from prune_engine.sources import load_embedder

TOLERANCE = 1e-4


def stock_masks(config, kept_layers: list[int], ffn_width: int) -> StructureMasks:
    """Whole layers dropped and every FFN cut to one width: a plain BERT / XLM-R config."""
    return StructureMasks(
        layers=torch.tensor([i in kept_layers for i in range(config.num_hidden_layers)]),
        heads=[torch.ones(h, dtype=torch.bool) for h in config.heads_per_layer],
        ffn=[torch.arange(f) < ffn_width for f in config.intermediate_sizes],
    )


def write_export(embedder, masks: StructureMasks, destination, quantize: bool = True):
    pruned = prune_embedder(embedder, masks).eval()
    export_embedder(pruned, destination, pruning_info(pruned, "source", embedder.config, kept_indices(masks)))
    return export_onnx(destination, quantize=quantize)


@pytest.fixture(scope="module")
def sts_sentences(shared_data_dir) -> list[str]:
    """48 real STS-B dev sentences of mixed length: every batch of them is padded."""
    return load_eval_data("sts", "dev").sentences1[:48]


@pytest.fixture(scope="module")
def minilm_exports(minilm, tmp_path_factory) -> dict:
    """The real MiniLM pruned two ways and served as ONNX: a stock BERT config (layers 0, 2, 4,
    FFN 1024) and an uneven one (remote code, a layer without heads)."""
    root = tmp_path_factory.mktemp("serving")
    structures = {
        "stock": stock_masks(minilm.config, kept_layers=[0, 2, 4], ffn_width=1024),
        "uneven": random_uneven_masks(minilm.config, seed=0, drop_layer=2, empty_heads_layer=4),
    }
    return {kind: (root / kind, write_export(minilm, masks, root / kind)) for kind, masks in structures.items()}


@pytest.fixture(scope="module")
def xlmr_export(tiny_xlmr_embedder, tmp_path_factory):
    """A tiny random XLM-R with the real 250,002-piece tokenizer and BGE-M3 heads, pruned unevenly
    (remote code, RoBERTa positions counted past the padding)."""
    embedder = tiny_xlmr_embedder(seed=7)
    directory = tmp_path_factory.mktemp("serving-xlmr") / "uneven"
    masks = random_uneven_masks(embedder.config, seed=7, drop_layer=1, empty_heads_layer=None)
    write_export(embedder, masks, directory, quantize=False)
    return directory


# --- the graph ------------------------------------------------------------------------------------


def graph_signature(path) -> tuple[dict, dict]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


def test_graph_has_the_sentence_transformers_onnx_contract(minilm_exports):
    inputs, outputs = graph_signature(minilm_exports["stock"][0] / "onnx" / "model.onnx")
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(outputs) == ["last_hidden_state"]
    batch, length, hidden = outputs["last_hidden_state"]
    assert isinstance(batch, str) and isinstance(length, str) and hidden == 384
    assert all(dims == [batch, length] for dims in inputs.values())


def test_xlmr_graph_takes_no_token_types(xlmr_export):
    inputs, _ = graph_signature(xlmr_export / "onnx" / "model.onnx")
    assert list(inputs) == ["input_ids", "attention_mask"]  # XLM-R's tokenizer makes none


@pytest.mark.parametrize("kind", ["stock", "uneven"])
def test_minilm_onnx_fp32_equals_pytorch_export(minilm_exports, sts_sentences, kind):
    directory, report = minilm_exports[kind]
    assert needs_remote_code(load_embedder(str(directory)).config) == (kind == "uneven")
    expected = load_embedder(str(directory)).encode(sts_sentences, batch_size=16)
    served = OnnxEmbedder(directory, "fp32").encode(sts_sentences, batch_size=16)
    assert np.abs(served - expected).max() < TOLERANCE
    assert report.fp32_max_abs_difference < TOLERANCE
    assert served.shape == (48, 384)


@pytest.mark.parametrize("kind", ["stock", "uneven"])
def test_int8_loads_encodes_and_stays_close_to_fp32(minilm_exports, sts_sentences, kind):
    directory, report = minilm_exports[kind]
    fp32 = OnnxEmbedder(directory, "fp32").encode(sts_sentences)
    int8 = OnnxEmbedder(directory, "int8").encode(sts_sentences)
    cosines = (fp32 * int8).sum(axis=1)  # both normalised
    assert cosines.min() > 0.99
    assert np.abs(int8 - fp32).max() > 1e-4  # it really is another model
    assert report.int8_min_cosine > 0.99
    sizes = {v: (directory / "onnx" / serving.VARIANT_FILES[v]).stat().st_size for v in ("fp32", "int8")}
    assert sizes["int8"] < 0.4 * sizes["fp32"]


def test_tiny_xlmr_onnx_equals_pytorch_export(xlmr_export, multilingual_sentences):
    config = json.loads((xlmr_export / "config.json").read_text())
    assert "AutoModel" in config["auto_map"]  # an uneven structure: the export ships its modeling file
    pytorch = load_embedder(str(xlmr_export))
    assert pytorch.has_multi_output  # the BGE-M3 heads stay PyTorch-only ...
    served = OnnxEmbedder(xlmr_export)
    assert not served.has_multi_output  # ... the graph serves the dense vector
    assert (served.pooling, served.max_length) == ("cls", 64)
    texts = multilingual_sentences + [" ".join(multilingual_sentences)]  # the last one is truncated
    assert np.abs(served.encode(texts, batch_size=4) - pytorch.encode(texts, batch_size=4)).max() < TOLERANCE


def test_unpadded_batches_and_single_texts_equal_pytorch(minilm_exports):
    """The graph was traced with padding; batches without any must come out the same."""
    directory, _ = minilm_exports["uneven"]
    pytorch, served = load_embedder(str(directory)), OnnxEmbedder(directory)
    same_length = ["The cat sat on the mat.", "The dog lay on the rug."]
    assert served.tokenize(same_length)["attention_mask"].all()
    for texts, batch_size in ((same_length, 2), (["A single sentence."], 1), (["Hi"], 1)):
        assert np.abs(served.encode(texts, batch_size) - pytorch.encode(texts, batch_size)).max() < TOLERANCE


def test_always_mask_computes_what_the_unmasked_shortcut_computes(minilm, real_sentences):
    features = minilm.tokenize(real_sentences)
    ids, mask = features["input_ids"], features["attention_mask"]
    assert not mask.all()
    unpadded = minilm.tokenize(["The cat sat on the mat.", "The dog lay on the rug."])
    with torch.no_grad():
        for batch in (features, unpadded):
            default = minilm.encoder(**batch).last_hidden_state
            masked = minilm.encoder(**batch, always_mask=True).last_hidden_state
            keep = batch["attention_mask"].bool()
            assert (default - masked)[keep].abs().max() < 1e-6
        # Padding really is masked: changing a padded position's token changes nothing real.
        changed = ids.clone()
        changed[mask == 0] = 1000
        before = minilm.encoder(ids, mask, features["token_type_ids"], always_mask=True).last_hidden_state
        after = minilm.encoder(changed, mask, features["token_type_ids"], always_mask=True).last_hidden_state
        assert (before - after)[mask.bool()].abs().max() < 1e-5


def test_evaluate_scores_the_onnx_embedder_like_the_pytorch_one(minilm_exports):
    directory, _ = minilm_exports["stock"]
    dev = load_eval_data("sts", "dev")
    pairs = ScoredPairs(dev.sentences1[:200], dev.sentences2[:200], dev.scores[:200], "sts dev, first 200")
    onnx_figures = evaluate(OnnxEmbedder(directory), pairs)
    pytorch_figures = evaluate(load_embedder(str(directory)), pairs)
    assert onnx_figures["spearman"] == pytest.approx(pytorch_figures["spearman"], abs=1e-3)
    assert onnx_figures["spearman"] > 50  # half of MiniLM, untrained, still correlates


def test_large_models_keep_weights_beside_the_graph(minilm, real_sentences, tmp_path, monkeypatch):
    """Over the protobuf limit (BGE-M3 in fp32) weights go to `.data` files; a later export without
    them removes the stale sidecars and leaves files this tool did not write alone."""
    directory = tmp_path / "export"
    monkeypatch.setattr(serving, "_PROTOBUF_LIMIT_BYTES", 0)
    write_export(minilm, stock_masks(minilm.config, [0, 3], 768), directory)
    onnx_dir = directory / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == [
        "model.onnx", "model.onnx.data", "model_qint8.onnx", "model_qint8.onnx.data"
    ]
    expected = load_embedder(str(directory)).encode(real_sentences)
    assert np.abs(OnnxEmbedder(directory).encode(real_sentences) - expected).max() < TOLERANCE
    assert (OnnxEmbedder(directory, "int8").encode(real_sentences) * expected).sum(1).min() > 0.99

    (onnx_dir / "my_optimised.onnx").write_bytes(b"not ours")
    monkeypatch.undo()
    export_onnx(directory, overwrite=True)
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["model.onnx", "model_qint8.onnx", "my_optimised.onnx"]
    assert np.abs(OnnxEmbedder(directory).encode(real_sentences) - expected).max() < TOLERANCE
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


# --- bad input ------------------------------------------------------------------------------------


def test_the_int8_study_finds_every_weight_matmul_of_the_last_layer(minilm_exports):
    """`benchmarks/serving.py --study` keeps the last layer in fp32 by the module scopes the exporter
    records; a torch that stopped recording them would make that candidate quantise everything."""
    import onnx

    from benchmarks.serving import last_layer_matmuls

    directory, _ = minilm_exports["stock"]  # source layers 0, 2, 4: the export's layers 0, 1, 2
    graph_path = directory / serving.ONNX_SUBDIR / serving.VARIANT_FILES["fp32"]
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    chosen = set(last_layer_matmuls(graph_path))
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and weights.intersection(n.input)]
    in_last_layer = {n.name for n in weight_matmuls if n.name in chosen}
    assert len(weight_matmuls) == 3 * 6 and len(in_last_layer) == 6  # Q, K, V, attention out, FFN in, FFN out
    assert all("layer.2" in dict((p.key, p.value) for p in n.metadata_props)["pkg.torch.onnx.name_scopes"]
               for n in weight_matmuls if n.name in in_last_layer)


def test_a_directory_that_is_not_an_export_is_refused(tmp_path, minilm_exports):
    with pytest.raises(ServingError, match="not a directory"):
        export_onnx(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ServingError, match=r"not a model export \(no modules.json\)"):
        export_onnx(tmp_path)
    with pytest.raises(ServingError, match="not a model export"):
        OnnxEmbedder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    directory, _ = minilm_exports["stock"]
    with pytest.raises(ServingError, match="unknown ONNX variant 'fp16'"):
        OnnxEmbedder(directory, "fp16")


def test_missing_variant_names_the_call_that_writes_it(minilm, tmp_path):
    directory = tmp_path / "export"
    pruned = prune_embedder(minilm, stock_masks(minilm.config, [0, 5], 1536)).eval()
    export_embedder(pruned, directory, pruning_info(pruned, "minilm", minilm.config))
    with pytest.raises(ServingError, match=r"export_onnx\(.*export'\) first|write it first"):
        OnnxEmbedder(directory)
    export_onnx(directory, quantize=False)
    OnnxEmbedder(directory, "fp32")
    with pytest.raises(ServingError, match="quantize=True"):
        OnnxEmbedder(directory, "int8")
    written = (directory / "onnx" / "model.onnx").read_bytes()
    with pytest.raises(ServingError, match="overwrite=True"):
        export_onnx(directory, quantize=False)
    assert (directory / "onnx" / "model.onnx").read_bytes() == written


def test_a_graph_that_fails_verification_writes_nothing(minilm, tmp_path, monkeypatch):
    directory = tmp_path / "export"
    pruned = prune_embedder(minilm, stock_masks(minilm.config, [1, 3], 1536)).eval()
    export_embedder(pruned, directory, pruning_info(pruned, "minilm", minilm.config))
    before = sorted(p.name for p in directory.iterdir())
    monkeypatch.setattr(serving, "EQUALITY_TOLERANCE", -1.0)
    with pytest.raises(ServingError, match="differs from PyTorch"):
        export_onnx(directory)
    assert sorted(p.name for p in directory.iterdir()) == before


# --- the quality gate -----------------------------------------------------------------------------


def test_quality_gate_recommends_int8_when_every_figure_keeps_99_percent():
    decision = quality_gate({"spearman": 80.0, "ndcg_at_10": 60.0}, {"spearman": 79.5, "ndcg_at_10": 59.5})
    assert decision["recommended"] == "int8" and decision["int8_recommended"] is True
    assert decision["fallen"] == []
    assert decision["figures"]["spearman"]["kept"] == pytest.approx(79.5 / 80)
    assert json.loads(json.dumps(decision)) == decision


def test_quality_gate_names_the_figure_that_fell_and_by_how_much():
    decision = quality_gate({"spearman": 80.0, "ndcg_at_10": 60.0}, {"spearman": 79.9, "ndcg_at_10": 58.0})
    assert decision["recommended"] == "fp32" and decision["fallen"] == ["ndcg_at_10"]
    assert "ndcg_at_10 fell to 96.67% of fp32 (58 vs 60, -2)" in decision["decision"]
    assert "spearman" not in decision["decision"]
    assert quality_gate({"spearman": 80.0}, {"spearman": 79.9}, threshold=0.9995)["recommended"] == "fp32"
    assert json.loads(json.dumps(decision)) == decision


def test_quality_gate_rejects_figures_it_cannot_compare():
    with pytest.raises(ValueError, match="int8 only: \\['recall'\\]"):
        quality_gate({"spearman": 80.0}, {"spearman": 80.0, "recall": 0.5})
    with pytest.raises(ValueError, match="non-empty"):
        quality_gate({}, {})
    with pytest.raises(ValueError, match="positive"):
        quality_gate({"spearman": -3.0}, {"spearman": 1.0})
    with pytest.raises(ValueError, match="not finite"):
        quality_gate({"spearman": 80.0}, {"spearman": float("nan")})
    with pytest.raises(ValueError, match="threshold"):
        quality_gate({"spearman": 80.0}, {"spearman": 80.0}, threshold=99)
