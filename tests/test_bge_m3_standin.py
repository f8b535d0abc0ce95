"""The BGE-M3 stand-in (`benchmarks/bge_m3_standin.py`): BGE-M3's files and shape with random
weights, in a hub cache laid out as huggingface_hub leaves a download, so `BAAI/bge-m3` resolves
offline as the real model does, through the engine's ordinary hub path (no special case).

The tiny variant (2 layers, hidden 64, 4 heads, FFN 128, the real 250,002-piece vocabulary) is
written to a temporary cache. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, when it
is imported, so in-process tests set its `constants` too; subprocesses get the environment.
Full-size figures: `benchmarks/bge_m3_stages.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bge_m3_standin import (
    REPO_ID,
    STANDIN_MARKER,
    STORAGE_FOLDER,
    Shape,
    StandInError,
    git_blob_sha1,
    hub_config,
    main,
    parameter_shapes,
    safetensors_header,
    write_standin,
)
from prune_engine.accounting import count_parameters
from prune_engine.presets import bge_m3_config
from prune_engine.sources import encoder_config_from_hf, load_embedder, resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = Shape(layers=2, hidden=64, heads=4, ffn=128)
TINY_ARGS = ["--layers", "2", "--hidden", "64", "--heads", "4", "--ffn", "128"]
SNAPSHOT_FILES = {
    "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "sparse_linear.pt", "colbert_linear.pt", "modules.json",
    "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
}
LFS_FILES = {"model.safetensors", "tokenizer.json", "sparse_linear.pt", "colbert_linear.pt"}


@pytest.fixture(scope="module")
def standin_cache(tmp_path_factory, shared_data_dir) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    write_standin(cache, TINY, seed=0, tokenizer_dir=shared_data_dir / "xlmr-tokenizer")
    return cache


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """HF_HUB_CACHE=cache HF_HUB_OFFLINE=1, for this process's huggingface_hub and its subprocesses."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def offline_hub(standin_cache, monkeypatch) -> Path:
    use_hub_cache(monkeypatch, standin_cache)
    return standin_cache


def snapshot_of(cache: Path) -> Path:
    storage = cache / STORAGE_FOLDER
    return storage / "snapshots" / (storage / "refs" / "main").read_text()


def test_the_real_shape_counts_566_705_152_parameters_without_the_pooler():
    config = encoder_config_from_hf(hub_config(Shape()))
    counts = count_parameters(config)
    assert counts.total == 566_705_152 and counts.embeddings == 264_395_776
    assert counts == count_parameters(bge_m3_config())
    assert (config.vocab_size, config.max_position_embeddings, config.pad_token_id) == (250002, 8194, 1)
    assert config.position_ids_from_padding and config.layer_norm_eps == 1e-5 and config.hidden_act == "gelu"
    # The checkpoint also holds the pooler (as the real one does): 567,754,752 float32 values.
    values = sum(int(np.prod(size)) for _, size in parameter_shapes(Shape()))
    assert values == 566_705_152 + 1024 * 1024 + 1024
    header = safetensors_header(parameter_shapes(Shape()))
    assert len(header) % 8 == 0 and int.from_bytes(header[:8], "little") == len(header) - 8
    last = json.loads(header[8:])["pooler.dense.bias"]["data_offsets"]
    assert last[1] == 4 * values  # the full model.safetensors: 2,271,064,488 bytes with its header


def test_the_cache_is_laid_out_as_huggingface_hub_leaves_a_download(offline_hub):
    from huggingface_hub import (
        get_cached_repo_tree,
        scan_cache_dir,
        snapshot_download,
        try_to_load_from_cache,
    )

    storage = offline_hub / STORAGE_FOLDER
    revision = (storage / "refs" / "main").read_text()
    assert re.fullmatch(r"[0-9a-f]{40}", revision)
    snapshot = storage / "snapshots" / revision
    links = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if not p.is_dir()}
    assert set(links) == SNAPSHOT_FILES and not (snapshot / "2_Normalize").exists()
    for path, link in links.items():
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        blob = link.resolve()
        assert blob.parent == (storage / "blobs").resolve()
        content = blob.read_bytes()
        expected = hashlib.sha256(content).hexdigest() if path in LFS_FILES else git_blob_sha1(content)
        assert blob.name == expected, path
    assert Path(snapshot_download(REPO_ID, local_files_only=True)) == snapshot
    assert Path(try_to_load_from_cache(REPO_ID, "config.json")) == snapshot / "config.json"
    assert {f.path: f.size for f in get_cached_repo_tree(REPO_ID)} == {p: link.stat().st_size for p, link in links.items()}
    report = scan_cache_dir(offline_hub)
    assert not report.warnings
    (repo,) = report.repos
    assert repo.repo_id == REPO_ID and [r.commit_hash for r in repo.revisions] == [revision]
    assert repo.refs["main"].commit_hash == revision


def test_the_files_are_bge_m3s(offline_hub, shared_data_dir):
    snapshot = snapshot_of(offline_hub)
    read = lambda name: json.loads((snapshot / name).read_text())  # noqa: E731
    assert read("config.json") == hub_config(TINY)
    assert read("config.json")["architectures"] == ["XLMRobertaModel"]
    assert read("tokenizer_config.json")["model_max_length"] == 8192
    assert read("sentence_bert_config.json")["max_seq_length"] == 8192
    assert read("1_Pooling/config.json")["pooling_mode_cls_token"] and not read("1_Pooling/config.json")["pooling_mode_mean_tokens"]
    assert [m["type"].rsplit(".", 1)[1] for m in read("modules.json")] == ["Transformer", "Pooling", "Normalize"]
    assert (snapshot / "tokenizer.json").read_bytes() == (shared_data_dir / "xlmr-tokenizer" / "tokenizer.json").read_bytes()
    assert (snapshot / "README.md").read_text().startswith(STANDIN_MARKER)
    for name, rows in (("sparse_linear.pt", 1), ("colbert_linear.pt", 64)):
        state = torch.load(snapshot / name, map_location="cpu", weights_only=True)
        assert set(state) == {"weight", "bias"} and state["weight"].shape == (rows, 64) and state["bias"].shape == (rows,)


def test_load_embedder_resolves_the_hub_id_to_the_snapshot(offline_hub, multilingual_sentences):
    snapshot = snapshot_of(offline_hub)
    assert resolve_model_dir(REPO_ID) == snapshot
    embedder = load_embedder(REPO_ID)
    assert (embedder.pooling, embedder.normalize, embedder.max_length) == ("cls", True, 8192)
    assert embedder.config.num_hidden_layers == 2 and embedder.config.vocab_size == 250002
    for name in ("sparse_linear", "colbert_linear"):
        state = torch.load(snapshot / f"{name}.pt", map_location="cpu", weights_only=True)
        assert torch.equal(getattr(embedder, name).weight, state["weight"])
    parameters = list(embedder.encoder.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad for p in parameters)
    # The weights are the model's own memory, copied out of the memory-mapped file.
    assert all(p.untyped_storage().resizable() for p in parameters)
    out = embedder.encode_multi(multilingual_sentences)
    dense = np.stack(out["dense"])
    cosines = (dense @ dense.T)[~np.eye(len(dense), dtype=bool)]
    assert cosines.max() < 0.99 and cosines.mean() < 0.9, "random weights this scale should keep texts apart"
    ids = embedder.tokenize(multilingual_sentences[:1])["input_ids"][0].tolist()
    assert out["sparse"][0] and set(out["sparse"][0]) <= set(ids) - set(embedder.tokenizer.all_special_ids)
    assert out["colbert"][0].shape == (len(ids) - 1, 64)


def test_stock_libraries_load_the_snapshot_without_remote_code(offline_hub, multilingual_sentences):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer, XLMRobertaModel

    snapshot = snapshot_of(offline_hub)
    expected = load_embedder(REPO_ID).encode(multilingual_sentences)
    sentence_transformer = SentenceTransformer(str(snapshot), device="cpu")
    assert sentence_transformer.max_seq_length == 8192
    assert np.abs(sentence_transformer.encode(multilingual_sentences) - expected).max() < 1e-5
    model = AutoModel.from_pretrained(snapshot).eval()
    assert type(model) is XLMRobertaModel
    batch = AutoTokenizer.from_pretrained(snapshot)(multilingual_sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1).numpy()
    assert np.abs(cls - expected).max() < 1e-5


def test_size_command_works_offline_from_the_cache(offline_hub):
    result = subprocess.run(
        [sys.executable, "-m", "prune_engine", "size", "--model", REPO_ID],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    total = count_parameters(encoder_config_from_hf(hub_config(TINY))).total
    assert f"{total:,}" in result.stdout.splitlines()[2]


def test_a_snapshot_the_engine_downloaded_resolves_offline(tmp_path, monkeypatch, shared_data_dir):
    """The cached file list names the whole repository, also what the engine's download leaves out
    (the ONNX export, pytorch_model.bin beside model.safetensors); offline it must still count as complete."""
    snapshot = write_standin(tmp_path, TINY, seed=0, tokenizer_dir=shared_data_dir / "xlmr-tokenizer")
    tree_file = tmp_path / STORAGE_FOLDER / "trees" / f"{snapshot.name}.json"
    tree = json.loads(tree_file.read_text())
    tree["files"]["onnx/model.onnx"] = {"size": 725_000, "blob_id": "1" * 40}
    tree["files"]["pytorch_model.bin"] = {"size": 9, "blob_id": "2" * 40, "lfs_sha256": "3" * 64, "lfs_size": 9}
    tree_file.write_text(json.dumps(tree))
    use_hub_cache(monkeypatch, tmp_path)
    assert resolve_model_dir(REPO_ID) == snapshot


def test_rewriting_replaces_only_a_stand_in(tmp_path, monkeypatch, capsys, shared_data_dir):
    tokenizer = ["--tokenizer", str(shared_data_dir / "xlmr-tokenizer")]
    assert main(["--cache", str(tmp_path), *TINY_ARGS, *tokenizer]) == 0
    printed = capsys.readouterr().out
    assert f"HF_HUB_CACHE={tmp_path.resolve()} HF_HUB_OFFLINE=1" in printed and "model.safetensors" in printed
    first = snapshot_of(tmp_path)
    blobs = sorted((tmp_path / STORAGE_FOLDER / "blobs").iterdir())
    assert main(["--cache", str(tmp_path), *TINY_ARGS, *tokenizer]) == 0
    assert snapshot_of(tmp_path) == first and sorted((tmp_path / STORAGE_FOLDER / "blobs").iterdir()) == blobs

    assert main(["--cache", str(tmp_path), "--seed", "1", *TINY_ARGS, *tokenizer]) == 0
    second = snapshot_of(tmp_path)
    assert second != first and not first.exists()
    assert (second / "model.safetensors").resolve() != (first / "model.safetensors").resolve()
    assert (second / "tokenizer.json").resolve() in {b.resolve() for b in blobs}  # shared with the removed one: kept

    # The real model (any snapshot this script did not write) is never touched.
    (second / "README.md").unlink()
    (second / "README.md").write_text("# BGE-M3\n")
    with pytest.raises(StandInError, match="did not write"):
        write_standin(tmp_path, TINY, seed=2, tokenizer_dir=shared_data_dir / "xlmr-tokenizer")
    assert snapshot_of(tmp_path) == second


def test_never_writes_into_the_repository_or_without_a_tokenizer(tmp_path, capsys):
    assert main(["--cache", str(ROOT / "hub-cache"), *TINY_ARGS]) == 2
    assert "inside the repository" in capsys.readouterr().err and not (ROOT / "hub-cache").exists()
    with pytest.raises(StandInError, match="lacks tokenizer.json"):
        write_standin(tmp_path, TINY, tokenizer_dir=tmp_path)
    with pytest.raises(StandInError, match="multiple of --heads"):
        write_standin(tmp_path, Shape(layers=1, hidden=60, heads=8, ffn=16))
    assert not any(tmp_path.iterdir())


def test_a_trimmed_stand_in_owns_its_weights(offline_hub, multilingual_sentences):
    from prune_engine.vocab import covered_texts, plan_vocabulary, trim_embedder

    source = load_embedder(REPO_ID)
    plan = plan_vocabulary(source.tokenizer, multilingual_sentences)
    trimmed = trim_embedder(source, plan)
    assert trimmed.config.vocab_size == plan.vocab_size < 250002
    texts = covered_texts(source.tokenizer, plan, multilingual_sentences)
    assert len(texts) == len(multilingual_sentences)
    before = source.encode(texts)
    assert np.abs(trimmed.encode(texts) - before).max() < 1e-5
    assert all(p.requires_grad for p in trimmed.encoder.parameters())
    with torch.no_grad():  # training the trimmed copy must leave the source (the teacher) as it was
        for parameter in trimmed.parameters():
            parameter.add_(1.0)
    assert np.array_equal(source.encode(texts), before)
