"""The original's encodings cache: a hit only for the same model files, settings and texts."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from prune_engine.embedder import Encoded
from prune_engine.encoding_cache import EncodingCache

PARTS = {"queries": ["a claim"], "documents": ["first abstract", "second abstract"]}


def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def settings(**changes):
    return SimpleNamespace(**{"pooling": "cls", "normalize": True, "max_length": 512, "has_multi_output": False, **changes})


def encodings():
    return {"queries": Encoded(np.ones((1, 4), np.float32)), "documents": Encoded(np.zeros((2, 4), np.float32))}


def test_a_stored_entry_is_read_back_for_the_same_model_settings_and_texts(tmp_path):
    folder = model_dir(tmp_path)
    cache = EncodingCache(folder, settings(), root=tmp_path / "cache")
    assert cache.get(PARTS) is None
    cache.put(PARTS, encodings())
    again = EncodingCache(folder, settings(), root=tmp_path / "cache").get(PARTS)
    assert np.array_equal(again["queries"].dense, np.ones((1, 4))) and again["documents"].dense.shape == (2, 4)
    assert not list((tmp_path / "cache").rglob("*.partial"))


def test_other_texts_settings_or_model_files_miss(tmp_path):
    folder = model_dir(tmp_path)
    EncodingCache(folder, settings(), root=tmp_path / "cache").put(PARTS, encodings())
    assert EncodingCache(folder, settings(), root=tmp_path / "cache").get({**PARTS, "queries": ["another claim"]}) is None
    assert EncodingCache(folder, settings(max_length=256), root=tmp_path / "cache").get(PARTS) is None
    assert EncodingCache(folder, settings(pooling="mean"), root=tmp_path / "cache").get(PARTS) is None
    weights = folder / "model.safetensors"
    weights.write_bytes(b"fine-tuned weights")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert EncodingCache(folder, settings(), root=tmp_path / "cache").get(PARTS) is None


def test_an_unreadable_entry_is_a_miss_and_is_replaced(tmp_path):
    cache = EncodingCache(model_dir(tmp_path), settings(), root=tmp_path / "cache")
    cache.put(PARTS, encodings())
    cache.path_for(PARTS).write_bytes(b"truncated")
    assert cache.get(PARTS) is None
    cache.put(PARTS, encodings())
    assert cache.get(PARTS)["documents"].dense.shape == (2, 4)


def test_multi_vector_and_lexical_outputs_round_trip(tmp_path):
    cache = EncodingCache(model_dir(tmp_path), settings(has_multi_output=True), root=tmp_path / "cache")
    colbert = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), np.float32)]
    stored = {"queries": Encoded(np.ones((1, 2), np.float32), [{"▁claim": 0.5}], colbert[:1]),
              "documents": Encoded(np.zeros((2, 2), np.float32), [{"▁first": 0.2}, {}], colbert)}
    cache.put(PARTS, stored)
    again = cache.get(PARTS)
    assert again["documents"].sparse == [{"▁first": 0.2}, {}] and again["queries"].sparse == [{"▁claim": 0.5}]
    assert [v.tolist() for v in again["documents"].colbert] == [v.tolist() for v in colbert]


def test_a_planted_pickle_is_never_executed(tmp_path):
    """A file planted where an entry belongs is read as data or not at all: it cannot run code."""
    import pickle

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    cache = EncodingCache(model_dir(tmp_path), settings(), root=tmp_path / "cache")
    path = cache.path_for(PARTS)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(Payload()))
    assert cache.get(PARTS) is None
    assert not marker.exists()
