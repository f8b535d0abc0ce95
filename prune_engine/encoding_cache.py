"""A disk cache of the original model's encodings, so that comparing several pruned candidates with
one original encodes the original once per data set (BGE-M3 on a retrieval corpus takes hours on
a CPU, and it is the same every time).

An entry is keyed by the model directory's files (name, size, modification time), the settings
that change vectors (pooling, normalisation, max length) and the texts themselves; any change to
one of them is a miss, never a stale hit. An entry is a numpy .npz read without pickle (arrays
and JSON text only: a planted file cannot run code), written to a temporary file and renamed, so
an interrupted write leaves no half entry. The cache lives in `$PRUNE_ENGINE_CACHE/encodings`
(default `~/.cache/prune_engine/encodings`); deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .embedder import Encoded

CACHE_ENV = "PRUNE_ENGINE_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prune_engine")


def model_fingerprint(model_dir: Path) -> str:
    """Every file of the model directory (recursively) by name, size and modification time."""
    digest = hashlib.sha256(str(Path(model_dir).resolve()).encode())
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class EncodingCache:
    """Encodings of one model loaded from `model_dir`, by the texts encoded.

    Example:
        >>> model = load_embedder("minilm")  # doctest: +SKIP
        >>> cache = EncodingCache(resolve_model_dir("minilm"), model)  # doctest: +SKIP
        >>> encoded = cache.get(parts) or cache.put(parts, encode_data(model, data))  # doctest: +SKIP
    """

    def __init__(self, model_dir: Path, embedder, root: Path | None = None):
        """`embedder` is the model as loaded from `model_dir`; its pooling, normalisation, length
        and output heads are part of the key."""
        self.folder = (root or default_cache_root()) / "encodings"
        settings = (embedder.pooling, embedder.normalize, embedder.max_length, embedder.has_multi_output)
        self.model_key = f"{model_fingerprint(model_dir)}\0{settings}"

    def path_for(self, parts: Mapping[str, list[str]]) -> Path:
        digest = hashlib.sha256(self.model_key.encode())
        for name, texts in sorted(parts.items()):
            digest.update(f"\0part {name} {len(texts)}\0".encode())
            for text in texts:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        return self.folder / f"{digest.hexdigest()}.npz"

    def get(self, parts: Mapping[str, list[str]]) -> dict | None:
        path = self.path_for(parts)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {part: _decode(stored, part) for part in parts}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # unreadable entry: encode again, and the new entry replaces it

    def put(self, parts: Mapping[str, list[str]], encoded: dict) -> dict:
        path = self.path_for(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        arrays = {key: value for part, item in encoded.items() for key, value in _encode(part, item).items()}
        try:
            with partial.open("wb") as handle:
                np.savez(handle, **arrays)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return encoded


def _encode(part: str, encoded) -> dict[str, np.ndarray]:
    """One part's outputs as plain arrays: dense (n, dim); multi-vectors concatenated with their
    lengths; lexical weights as JSON text."""
    arrays = {f"{part}/dense": np.asarray(encoded.dense)}
    if encoded.colbert is not None:
        arrays[f"{part}/colbert"] = np.concatenate(encoded.colbert)
        arrays[f"{part}/colbert_lengths"] = np.array([len(v) for v in encoded.colbert])
    if encoded.sparse is not None:
        arrays[f"{part}/sparse"] = np.array(json.dumps(encoded.sparse))
    return arrays


def _decode(stored, part: str):
    colbert = None
    if f"{part}/colbert" in stored:
        ends = np.cumsum(stored[f"{part}/colbert_lengths"])
        colbert = np.split(stored[f"{part}/colbert"], ends[:-1])
    sparse = json.loads(str(stored[f"{part}/sparse"])) if f"{part}/sparse" in stored else None
    return Encoded(stored[f"{part}/dense"], sparse, colbert)
