"""Serving formats: an export as ONNX (fp32, and int8 by dynamic quantization), run with ONNX Runtime.

The graph is traced from this project's own encoder, so every structure an export can hold (stock
BERT / XLM-R configs and uneven per-layer heads and widths alike) becomes the same plain graph:
inputs `input_ids`, `attention_mask` (+ `token_type_ids` where the tokenizer makes them), dynamic
batch and length, output `last_hidden_state`, the contract of sentence-transformers' ONNX backend.
Files: `onnx/model.onnx` (fp32) and `onnx/model_qint8.onnx` (int8 weights). Pooling and
normalisation stay outside the graph and are read from the export's sentence-transformers files.

`OnnxEmbedder` serves them with `Embedder.encode`'s contract. sentence-transformers' own
`SentenceTransformer(dir, backend="onnx")` loads the same files (stock and uneven exports, the
latter with trust_remote_code=True) through optimum-onnx, but optimum-onnx pins transformers<4.58
and this project needs transformers 5, so that route waits for an optimum-onnx release.

Dynamic int8 quantises activations per batch: a text's int8 vector depends slightly on the texts
batched (and padded) with it. BGE-M3's lexical (sparse) and multi-vector (ColBERT) heads are
PyTorch-only: the graph gives the dense path. `quality_gate` decides from evaluation figures
whether int8 may replace fp32.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .atomic import remove_stale_partials, staging_folder
from .data import DEMO_DATA_DIR
from .embedder import Embedder, pool
from .sources import load_embedder, read_encoder_config, read_sentence_transformers_settings

ONNX_SUBDIR = "onnx"
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model_qint8.onnx"}
OUTPUT_NAME = "last_hidden_state"
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 20  # torch 2.13's exporter default, pinned so a torch upgrade cannot outrun ONNX Runtime
EQUALITY_TOLERANCE = 1e-4  # max abs difference of pooled, normalised vectors, ONNX fp32 vs PyTorch
# Dynamic int8 (activations quantised per batch at run time), chosen on this CPU (AMD EPYC, VNNI)
# by `benchmarks/serving.py --study --scifact` on dev data (results/serving_quantization_cpu.md):
# per-channel MatMul weights, since per-tensor scales lose outlier channels (min cosine to fp32 0.96
# against 0.99); the embedding tables (Gather) too, a third of the file size (18.0 against 53.7 MB)
# at the same speed and quality (SciFact train queries 99.58% of fp32, MatMul-only 99.48%).
# reduce_range (meant for CPUs without VNNI) measured within noise, uint8 weights slower.
QUANTIZATION = {"op_types_to_quantize": ["MatMul", "Gather"], "per_channel": True, "reduce_range": False,
                "weight_type": "QInt8"}
# Weights beyond the protobuf's 2 GiB limit (BGE-M3 in fp32) go to `model.onnx.data` beside the graph.
_PROTOBUF_LIMIT_BYTES = 2**31 - 2**26


class ServingError(ValueError):
    """A serving export or load that cannot be done; the message says what to do instead."""


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote and how well it matched PyTorch on the probe texts."""

    files: dict[str, str]  # variant -> path
    exporter: str
    opset: int
    fp32_max_abs_difference: float  # pooled vectors, ONNX fp32 vs PyTorch
    int8_min_cosine: float | None  # pooled vectors, ONNX int8 vs ONNX fp32

    def as_dict(self) -> dict:
        return asdict(self)


def _probe_texts() -> list[str]:
    """Real sentences of very different lengths, so the probe batch is padded."""
    lines = (DEMO_DATA_DIR / "sentences.txt").read_text(encoding="utf-8").splitlines()
    return [*lines[:8], "Yes.", " ".join(lines[8:16])]


def _require_export(export_dir: str | Path) -> Path:
    directory = Path(export_dir).expanduser()
    if not directory.is_dir():
        raise ServingError(f"{directory} is not a directory: give the directory an export was written to")
    missing = [name for name in ("config.json", "modules.json") if not (directory / name).is_file()]
    if missing:
        raise ServingError(
            f"{directory} is not a model export (no {', '.join(missing)}): point to a directory written by "
            "`export_embedder` (a run's export/ folder) or any sentence-transformers model directory"
        )
    return directory


def _pooled(token_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """(batch, length, hidden) -> (batch, hidden), pooled and normalised as the export declares."""
    dense = pool(token_states, attention_mask, pooling)
    return F.normalize(dense, dim=-1) if normalize else dense


def _session(model_path: Path, threads: int | None = None, providers: Sequence[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _run_graph(session, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """ONNX Runtime on tokenizer output -> last_hidden_state (batch, length, hidden)."""
    feeds = {i.name: features[i.name].cpu().numpy().astype(np.int64) for i in session.get_inputs()}
    return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])


class _LastHiddenState(nn.Module):
    """The encoder as the graph exposes it: always masked (a traced no-padding shortcut would
    ignore padding in every later batch), returning the token states only."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, always_mask=True
        ).last_hidden_state


def _graph_input_names(embedder: Embedder) -> list[str]:
    wanted = set(embedder.tokenizer.model_input_names)
    return [name for name in GRAPH_INPUTS if name in wanted]


def _export_fp32(embedder: Embedder, path: Path) -> None:
    """torch.export-based exporter (torch's default, via onnxscript): it refuses data-dependent
    branches instead of silently baking in the traced batch's, and keeps batch and length symbolic."""
    names = _graph_input_names(embedder)
    features = embedder.tokenize(_probe_texts()[8:10])  # batch 2 of unequal length: nothing specialised to 1
    args = tuple(features[name] for name in names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    parameter_bytes = sum(p.numel() * p.element_size() for p in embedder.encoder.parameters())
    torch.onnx.export(
        _LastHiddenState(embedder.encoder).eval(),
        args,
        str(path),
        dynamo=True,
        input_names=names,
        output_names=[OUTPUT_NAME],
        dynamic_shapes=tuple({0: batch, 1: length} for _ in names),
        opset_version=OPSET,
        external_data=parameter_bytes > _PROTOBUF_LIMIT_BYTES,
        verbose=False,
    )


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, settings: Mapping | None = None) -> None:
    """Dynamic int8 quantisation of an fp32 graph; `settings` are `quantize_dynamic`'s arguments
    (weight_type by name), `QUANTIZATION` when not given."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = dict(QUANTIZATION if settings is None else settings)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    excluded = [*settings.pop("nodes_to_exclude", []), *_nodes_with_empty_weights(fp32_path)]
    quantize_dynamic(
        fp32_path,
        int8_path,
        weight_type=QuantType[settings.pop("weight_type", "QInt8")],
        nodes_to_exclude=excluded,
        use_external_data_format=fp32_path.with_name(fp32_path.name + ".data").exists(),
        **settings,
    )


def _nodes_with_empty_weights(path: Path) -> list[str]:
    """Nodes whose weight has a zero dimension (the output projection of a layer that keeps no
    head, an FFN that keeps no neuron): quantising them corrupts that layer's output."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    empty = {tensor.name for tensor in graph.initializer if 0 in tuple(tensor.dims)}
    return [node.name for node in graph.node if empty.intersection(node.input)]


def _probe_vectors(embedder: Embedder, model_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(PyTorch vectors, ONNX vectors) of the probe texts, each (n_texts, hidden)."""
    features = embedder.tokenize(_probe_texts())
    with torch.inference_mode():
        expected = embedder(features).dense.float()
    states = _run_graph(_session(model_path), features)
    return expected, _pooled(states, features["attention_mask"], embedder.pooling, embedder.normalize)


def _publish(staging: Path, onnx_dir: Path) -> None:
    """Moves each staged file into place (os.replace: atomic per file). A graph replaced without a
    weights sidecar loses the sidecar its earlier version had; nothing else there is touched."""
    onnx_dir.mkdir(exist_ok=True)
    staged = sorted(path for path in staging.iterdir() if path.is_file())
    for path in staged:
        os.replace(path, onnx_dir / path.name)
    names = {path.name for path in staged}
    for name in names:
        sidecar = onnx_dir / (name + ".data")
        if name.endswith(".onnx") and name + ".data" not in names and sidecar.is_file():
            sidecar.unlink()


def export_onnx(export_dir: str | Path, quantize: bool = True, overwrite: bool = False) -> OnnxExport:
    """Writes `onnx/model.onnx` (fp32) and, with `quantize`, `onnx/model_qint8.onnx` into an export.
    The fp32 graph is checked against PyTorch on real padded text before anything is published."""
    directory = _require_export(export_dir)
    onnx_dir = directory / ONNX_SUBDIR
    targets = [VARIANT_FILES["fp32"]] + ([VARIANT_FILES["int8"]] if quantize else [])
    existing = [name for name in targets if (onnx_dir / name).exists()]
    if existing and not overwrite:
        raise ServingError(f"{onnx_dir} already holds {', '.join(existing)}: pass overwrite=True to replace them")
    embedder = load_embedder(str(directory)).eval()
    remove_stale_partials(directory, ONNX_SUBDIR)
    staging = staging_folder(onnx_dir)
    staging.mkdir()
    try:
        fp32_path = staging / VARIANT_FILES["fp32"]
        _export_fp32(embedder, fp32_path)
        expected, fp32_vectors = _probe_vectors(embedder, fp32_path)
        difference = float((fp32_vectors - expected).abs().max())
        if not difference <= EQUALITY_TOLERANCE:
            raise ServingError(
                f"the ONNX graph of {directory} differs from PyTorch by {difference:.2e} (> {EQUALITY_TOLERANCE}) "
                "on the probe texts; nothing was written. Report this with the export's config.json"
            )
        min_cosine = None
        if quantize:
            quantize_onnx(fp32_path, staging / VARIANT_FILES["int8"])
            _, int8_vectors = _probe_vectors(embedder, staging / VARIANT_FILES["int8"])
            min_cosine = float(F.cosine_similarity(int8_vectors, fp32_vectors, dim=-1).min())
        _publish(staging, onnx_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OnnxExport(
        files={variant: str(onnx_dir / VARIANT_FILES[variant]) for variant in (["fp32", "int8"] if quantize else ["fp32"])},
        exporter=f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        opset=OPSET,
        fp32_max_abs_difference=difference,
        int8_min_cosine=min_cosine,
    )


def _serving_length(directory: Path, tokenizer, declared: int | None) -> int:
    """The export's declared length, else the tokenizer's, never past the position embeddings."""
    config = read_encoder_config(str(directory))
    positions = config.max_position_embeddings - (config.pad_token_id + 1 if config.position_ids_from_padding else 0)
    return min(declared or min(getattr(tokenizer, "model_max_length", 512), 8192), positions)


class OnnxEmbedder:
    """An export's ONNX graph with its tokenizer, pooling and normalisation: the dense `encode`
    contract of `Embedder`, so `evaluate.evaluate` scores it as it is. Threads default to torch's
    setting, so both backends run on the same budget."""

    has_multi_output = False

    def __init__(self, export_dir: str | Path, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None):
        from transformers import AutoTokenizer

        if variant not in VARIANT_FILES:
            raise ServingError(f"unknown ONNX variant {variant!r}; choose one of {sorted(VARIANT_FILES)}")
        self.directory = _require_export(export_dir)
        self.model_path = self.directory / ONNX_SUBDIR / VARIANT_FILES[variant]
        if not self.model_path.is_file():
            flag = "" if variant == "fp32" else ", quantize=True"
            raise ServingError(
                f"{self.model_path} does not exist: write it first with "
                f"prune_engine.serving.export_onnx({str(self.directory)!r}{flag})"
            )
        self.variant = variant
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory, trust_remote_code=False)
        self.pooling, self.normalize, declared_length = read_sentence_transformers_settings(self.directory)
        self.max_length = _serving_length(self.directory, self.tokenizer, declared_length)
        self.session = _session(self.model_path, threads, providers)
        self.config = read_encoder_config(str(self.directory))
        self.hidden_size = self.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False, description: str = "encode"
    ) -> np.ndarray:
        """Dense embeddings as float32 (n_texts, hidden), in the order given; batches are formed
        longest first, as `Embedder.encode` forms them, so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        result = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=description, disable=not show_progress, unit="batch"):
            indices = order[start : start + batch_size]
            features = self.tokenize([texts[i] for i in indices])
            states = _run_graph(self.session, features)
            result[indices] = _pooled(states, features["attention_mask"], self.pooling, self.normalize).numpy()
        return result


def quality_gate(fp32: Mapping[str, float], int8: Mapping[str, float], threshold: float = 0.99) -> dict:
    """Recommends int8 only when every figure keeps at least `threshold` of its fp32 value (figures
    where higher is better: Spearman, nDCG, recall, cosine). JSON-serialisable."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}: it is the share of fp32 int8 must keep")
    if not fp32 or set(fp32) != set(int8):
        raise ValueError(
            f"fp32 and int8 must give the same, non-empty figures; fp32 only: {sorted(set(fp32) - set(int8))}, "
            f"int8 only: {sorted(set(int8) - set(fp32))}"
        )
    bad = [name for name in fp32 if not (math.isfinite(fp32[name]) and fp32[name] > 0 and math.isfinite(int8[name]))]
    if bad:
        raise ValueError(f"figures {bad} are not finite, or not positive for fp32: a kept share needs a positive fp32 figure")
    figures = {
        name: {"fp32": float(fp32[name]), "int8": float(int8[name]), "kept": float(int8[name]) / float(fp32[name])}
        for name in sorted(fp32)
    }
    fallen = {name: row for name, row in figures.items() if row["kept"] < threshold}
    if fallen:
        reason = "; ".join(
            f"{name} fell to {row['kept']:.2%} of fp32 ({row['int8']:.4g} vs {row['fp32']:.4g}, "
            f"{row['int8'] - row['fp32']:+.4g})"
            for name, row in fallen.items()
        )
        decision = f"serve fp32: {reason}, below the {threshold:.0%} threshold"
    else:
        decision = f"serve int8: every figure keeps at least {threshold:.0%} of fp32"
    return {
        "recommended": "fp32" if fallen else "int8",
        "int8_recommended": not fallen,
        "threshold": threshold,
        "fallen": sorted(fallen),
        "figures": figures,
        "decision": decision,
    }
