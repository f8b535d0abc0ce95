"""Writes a random-weight stand-in for BAAI/bge-m3 into a Hugging Face hub cache, laid out as
`huggingface_hub` leaves a download, so `model: BAAI/bge-m3` with HF_HUB_OFFLINE=1 resolves
exactly as it does for a user who has the real model cached. The real weights cannot be
downloaded here; everything else about the model (shape, files, tokenizer, output heads) is real.

    python benchmarks/bge_m3_standin.py --cache /work/bge-m3-standin-cache      # full size, ~2.3 GB
    python benchmarks/bge_m3_standin.py --cache /tmp/hub --layers 2 --hidden 64 --heads 4 --ffn 128
    HF_HUB_CACHE=/work/bge-m3-standin-cache HF_HUB_OFFLINE=1 python -m prune_engine size --model BAAI/bge-m3

Layout written under `<cache>/models--BAAI--bge-m3/`:
- `blobs/<id>`: each file once; `<id>` is the sha256 of a Git LFS file (weights, heads and the
  17 MB tokenizer.json, as the Hub stores them) and the git blob sha1 of any other file;
- `snapshots/<revision>/<path>`: relative symlinks into `blobs/`;
- `refs/main`: the revision (40 hex, derived from the files, so the same seed and shape give the
  same revision and a rerun writes nothing);
- `trees/<revision>.json`: the file listing `snapshot_download` caches (huggingface_hub >= 2).

Files, as the real repository has them: config.json (XLMRobertaModel), model.safetensors (fp32,
pooler included), tokenizer.json / tokenizer_config.json / special_tokens_map.json (the XLM-R
tokenizer from ../shared/data/xlmr-tokenizer, model_max_length 8192), sparse_linear.pt and
colbert_linear.pt (nn.Linear state dicts, loadable with `weights_only=True`), modules.json,
sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/config.json (CLS) and a
README.md that says this is a stand-in. Like a real download there is no 2_Normalize folder
(Git keeps no empty folders; modules.json names it and sentence-transformers needs no files for
it). Not reproduced: sentencepiece.bpe.model (not available offline; tokenizer.json is what
transformers loads), the ONNX export, images and the legacy pytorch_model.bin.

The weights are streamed to disk one slice at a time (at most 64 MiB in memory), so writing the
full model needs a few hundred MB of RAM. A cache whose BAAI/bge-m3 entry this script did not
write (the real model, say) is never touched.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import struct
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "BAAI/bge-m3"
STORAGE_FOLDER = "models--BAAI--bge-m3"
STANDIN_MARKER = "# Random-weight stand-in for BAAI/bge-m3"
DEFAULT_TOKENIZER_DIR = ROOT.parent / "shared" / "data" / "xlmr-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MODEL_MAX_LENGTH = 8192
VOCAB_SIZE = 250002  # the XLM-R tokenizer's pieces; every id it emits needs a row
LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".model")
LFS_MIN_BYTES = 10 * 1024 * 1024  # the Hub keeps larger files in LFS whatever their name
CHUNK_ELEMENTS = 16 * 1024 * 1024  # float32 values generated and written at a time (64 MiB)

# Random-weight scales (mean, std). With matrices at the initializer's std 0.02, attention is near
# uniform and every text's CLS vector is nearly the same (cosine 0.96-1.0 between unrelated
# sentences), which no trained model does. At std 1.28 / sqrt(hidden) (0.04 at BGE-M3's 1024, the
# order of trained XLM-R matrices) attention is peaked enough that unrelated STS-B sentences in four
# languages have CLS cosines of 0.67-0.87 (mean 0.77) after 24 layers, 0.56-0.88 in the tiny variant.
MATRIX_GAIN = 1.28
WORD_EMBEDDING_INIT = (0.0, 0.05)
EMBEDDING_INIT = (0.0, 0.02)
BIAS_INIT = (0.0, 0.02)
LAYER_NORM_WEIGHT_INIT = (1.0, 0.1)


class StandInError(ValueError):
    """Input the stand-in cannot be written with; nothing was written."""


@dataclass(frozen=True)
class Shape:
    """The encoder's size; the default is BGE-M3's. Smaller values make the tiny variant for tests."""

    layers: int = 24
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096

    def check(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.ffn) < 1:
            raise StandInError(f"every size must be at least 1, got {self}")
        if self.hidden % self.heads:
            raise StandInError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads}")


def hub_config(shape: Shape) -> dict:
    """BAAI/bge-m3's config.json (transformers 4.33 wrote it), with the encoder's size from `shape`."""
    return {
        "_name_or_path": "",
        "architectures": ["XLMRobertaModel"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ffn,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 8194,
        "model_type": "xlm-roberta",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "output_past": True,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.33.0",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def parameter_shapes(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """XLMRobertaModel's state dict (pooler included, as in the real checkpoint), in its order."""
    h, f = shape.hidden, shape.ffn
    names = [
        ("embeddings.word_embeddings.weight", (VOCAB_SIZE, h)),
        ("embeddings.position_embeddings.weight", (8194, h)),
        ("embeddings.token_type_embeddings.weight", (1, h)),
        ("embeddings.LayerNorm.weight", (h,)),
        ("embeddings.LayerNorm.bias", (h,)),
    ]
    layer = [
        *[(f"attention.self.{p}.{kind}", (h, h) if kind == "weight" else (h,)) for p in ("query", "key", "value") for kind in ("weight", "bias")],
        ("attention.output.dense.weight", (h, h)),
        ("attention.output.dense.bias", (h,)),
        ("attention.output.LayerNorm.weight", (h,)),
        ("attention.output.LayerNorm.bias", (h,)),
        ("intermediate.dense.weight", (f, h)),
        ("intermediate.dense.bias", (f,)),
        ("output.dense.weight", (h, f)),
        ("output.dense.bias", (h,)),
        ("output.LayerNorm.weight", (h,)),
        ("output.LayerNorm.bias", (h,)),
    ]
    for index in range(shape.layers):
        names += [(f"encoder.layer.{index}.{name}", size) for name, size in layer]
    return names + [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]


def matrix_std(hidden: int) -> float:
    return MATRIX_GAIN / hidden**0.5


def init_scale(name: str, hidden: int) -> tuple[float, float]:
    if name == "embeddings.word_embeddings.weight":
        return WORD_EMBEDDING_INIT
    if name.startswith("embeddings.") and name.endswith("embeddings.weight"):
        return EMBEDDING_INIT
    if name.endswith("LayerNorm.weight"):
        return LAYER_NORM_WEIGHT_INIT
    return BIAS_INIT if name.endswith("bias") else (0.0, matrix_std(hidden))


def random_chunks(name: str, size: tuple[int, ...], seed: int, hidden: int):
    """The tensor's values as float32 row blocks of at most CHUNK_ELEMENTS, seeded by (seed, name)."""
    mean, std = init_scale(name, hidden)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    row_size = 1 if len(size) == 1 else size[1]
    rows = size[0]
    step = max(1, CHUNK_ELEMENTS // row_size)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        # (count * row_size,): the rows [start, start + count) of the row-major tensor
        yield torch.randn(count * row_size, generator=generator).mul_(std).add_(mean)


def random_linear_state(in_features: int, out_features: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(out_features, in_features, generator=generator) * matrix_std(in_features),
        "bias": torch.randn(out_features, generator=generator) * BIAS_INIT[1],
    }


def safetensors_header(shapes: list[tuple[str, tuple[int, ...]]]) -> bytes:
    """The 8-byte length and JSON header of a float32 safetensors file with these tensors, in order."""
    entries, offset = {}, 0
    for name, size in shapes:
        nbytes = 4 * int(torch.Size(size).numel())
        entries[name] = {"dtype": "F32", "shape": list(size), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(header)) + header


def write_random_safetensors(write: Callable[[bytes | memoryview], None], shape: Shape, seed: int) -> None:
    if sys.byteorder != "little":
        raise StandInError("safetensors stores little-endian values; this machine is big-endian")
    shapes = parameter_shapes(shape)
    write(safetensors_header(shapes))
    for name, size in shapes:
        for chunk in random_chunks(name, size, seed, shape.hidden):
            write(memoryview(chunk.numpy()).cast("B"))


def torch_save_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def readme(shape: Shape, seed: int) -> bytes:
    return f"""{STANDIN_MARKER} (not the real model)

Written by `benchmarks/bge_m3_standin.py` of prune-engine with seed {seed}: BGE-M3's files and
config ({shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, FFN {shape.ffn},
vocabulary {VOCAB_SIZE:,}) with random weights, so that code which loads `{REPO_ID}` from the
Hugging Face cache can be tested and sized offline. Its embeddings mean nothing.
""".encode()


def small_files(shape: Shape, seed: int, tokenizer_dir: Path) -> dict[str, bytes]:
    """Every file except model.safetensors, by its path in the repository."""
    tokenizer_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = MODEL_MAX_LENGTH
    pooling = {
        "word_embedding_dimension": shape.hidden,
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    versions = {"sentence_transformers": "2.2.2", "transformers": "4.33.0", "pytorch": "2.1.2+cu121"}
    return {
        "README.md": readme(shape, seed),
        "config.json": json_bytes(hub_config(shape)),
        "tokenizer.json": (tokenizer_dir / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": json_bytes(tokenizer_config),
        "special_tokens_map.json": (tokenizer_dir / "special_tokens_map.json").read_bytes(),
        "modules.json": json_bytes(modules),
        "sentence_bert_config.json": json_bytes({"max_seq_length": MODEL_MAX_LENGTH, "do_lower_case": False}),
        "config_sentence_transformers.json": json_bytes({"__version__": versions}),
        "1_Pooling/config.json": json_bytes(pooling),
        "sparse_linear.pt": torch_save_bytes(random_linear_state(shape.hidden, 1, seed + 1)),
        "colbert_linear.pt": torch_save_bytes(random_linear_state(shape.hidden, shape.hidden, seed + 2)),
    }


@dataclass(frozen=True)
class StoredFile:
    """One file of the snapshot: where its bytes are and what the Hub's tree listing says of it."""

    path: str
    blob: str  # name in blobs/: sha256 for LFS files, git blob sha1 for the others
    size: int
    blob_id: str  # git blob sha1 of what Git stores (the LFS pointer for LFS files)
    lfs_sha256: str | None

    def tree_entry(self) -> dict:
        entry: dict = {"size": self.size, "blob_id": self.blob_id}
        if self.lfs_sha256:
            entry.update(lfs_sha256=self.lfs_sha256, lfs_size=self.size)
        return entry


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_MIN_BYTES


class CacheWriter:
    """Writes blobs, the snapshot's symlinks, the tree listing and refs/main of one hub repository."""

    def __init__(self, cache: Path):
        self.storage = cache / STORAGE_FOLDER
        self.blobs = self.storage / "blobs"

    def _publish(self, temporary: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, final)

    def _write_atomically(self, final: Path, content: bytes) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.incomplete"
        try:
            temporary.write_bytes(content)
            self._publish(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)

    def store_bytes(self, path: str, content: bytes) -> StoredFile:
        sha256 = hashlib.sha256(content).hexdigest()
        if is_lfs(path, len(content)):
            stored = StoredFile(path, sha256, len(content), git_blob_sha1(lfs_pointer(sha256, len(content))), sha256)
        else:
            stored = StoredFile(path, git_blob_sha1(content), len(content), git_blob_sha1(content), None)
        if not (self.blobs / stored.blob).is_file():
            self._write_atomically(self.blobs / stored.blob, content)
        return stored

    def store_stream(self, path: str, produce: Callable[[Callable], None]) -> StoredFile:
        """An LFS file too large to hold in memory: `produce(write)` writes it piece by piece."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        temporary = self.blobs / f".{uuid.uuid4().hex}.incomplete"
        digest, size = hashlib.sha256(), 0
        try:
            with temporary.open("wb") as handle:

                def write(piece) -> None:
                    nonlocal size
                    digest.update(piece)
                    size += handle.write(piece)

                produce(write)
            sha256 = digest.hexdigest()
            self._publish(temporary, self.blobs / sha256)
        finally:
            temporary.unlink(missing_ok=True)
        return StoredFile(path, sha256, size, git_blob_sha1(lfs_pointer(sha256, size)), sha256)

    def publish_snapshot(self, files: list[StoredFile]) -> tuple[str, Path]:
        """Links the files into snapshots/<revision>/, then writes trees/<revision>.json and refs/main."""
        listing = "".join(f"{f.path}\0{f.blob_id}\n" for f in sorted(files, key=lambda f: f.path))
        revision = hashlib.sha1(listing.encode()).hexdigest()
        snapshot = self.storage / "snapshots" / revision
        for stored in files:
            link = snapshot / stored.path
            link.parent.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(self.blobs / stored.blob, link.parent)
            temporary = link.parent / f".{link.name}.{uuid.uuid4().hex[:8]}.incomplete"
            os.symlink(target, temporary)
            os.replace(temporary, link)
        tree = {"format_version": 1, "files": {f.path: f.tree_entry() for f in sorted(files, key=lambda f: f.path)}}
        self._write_atomically(self.storage / "trees" / f"{revision}.json", json.dumps(tree, indent=1).encode())
        self._write_atomically(self.storage / "refs" / "main", revision.encode())  # no newline, as the hub writes it
        return revision, snapshot

    def current_revision(self) -> str | None:
        ref = self.storage / "refs" / "main"
        return ref.read_text() if ref.is_file() else None

    def written_by_standin(self, revision: str) -> bool:
        card = self.storage / "snapshots" / revision / "README.md"
        return card.is_file() and card.read_text(errors="replace").startswith(STANDIN_MARKER)


def check_destination(cache: Path, tokenizer_dir: Path) -> None:
    """Everything that can be wrong with the destination, before any weight is generated."""
    if cache.is_relative_to(ROOT):
        raise StandInError(f"{cache} is inside the repository ({ROOT}); weights never go there: pass --cache outside it")
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if missing:
        raise StandInError(f"{tokenizer_dir} lacks {', '.join(missing)}: pass --tokenizer, the XLM-R tokenizer folder")
    writer = CacheWriter(cache)
    revision = writer.current_revision()
    if revision is not None and not writer.written_by_standin(revision):
        raise StandInError(
            f"{writer.storage} already holds a {REPO_ID} snapshot this script did not write (revision {revision}, "
            "perhaps the real model); it is left alone: pass another --cache"
        )


def remove_previous_standin(cache: Path, previous: str | None, current: str) -> None:
    """A stand-in this script wrote before, with another seed or shape: removed through huggingface_hub,
    which keeps every blob the new snapshot shares."""
    if previous is None or previous == current or not CacheWriter(cache).written_by_standin(previous):
        return
    from huggingface_hub import scan_cache_dir

    scan_cache_dir(cache).delete_revisions(previous).execute()


def write_standin(cache: Path, shape: Shape = Shape(), seed: int = 0, tokenizer_dir: Path = DEFAULT_TOKENIZER_DIR) -> Path:
    """Writes the stand-in and returns its snapshot folder (what `snapshot_download` resolves to)."""
    cache = cache.expanduser().resolve()
    shape.check()
    check_destination(cache, tokenizer_dir)
    writer = CacheWriter(cache)
    previous = writer.current_revision()
    files = [writer.store_bytes(path, content) for path, content in small_files(shape, seed, tokenizer_dir).items()]
    files.append(writer.store_stream("model.safetensors", lambda write: write_random_safetensors(write, shape, seed)))
    revision, snapshot = writer.publish_snapshot(files)
    remove_previous_standin(cache, previous, revision)
    return snapshot


def default_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER_DIR, help="XLM-R tokenizer folder")
    tiny = parser.add_argument_group("a smaller encoder, for tests (default: BGE-M3's size)")
    tiny.add_argument("--layers", type=int, default=Shape.layers)
    tiny.add_argument("--hidden", type=int, default=Shape.hidden)
    tiny.add_argument("--heads", type=int, default=Shape.heads)
    tiny.add_argument("--ffn", type=int, default=Shape.ffn)
    args = parser.parse_args(argv)
    cache = (args.cache or default_cache()).expanduser().resolve()
    try:
        snapshot = write_standin(cache, Shape(args.layers, args.hidden, args.heads, args.ffn), args.seed, args.tokenizer)
    except StandInError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in sorted(p for p in snapshot.rglob("*") if p.is_symlink()):
        print(f"{path.stat().st_size:>14,}  {path.relative_to(snapshot)}")
    print(f"snapshot: {snapshot}")
    print(f"use it with: HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1 (then model: {REPO_ID})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
