"""Serving: encode throughput and quality of a pruned MiniLM in PyTorch and ONNX Runtime, fp32 and int8.

Variants: the original all-MiniLM-L6-v2 (PyTorch fp32); the pruned model in PyTorch fp32, PyTorch
int8 (torch.ao dynamic quantisation of every nn.Linear, per-channel weights), ONNX Runtime fp32
and ONNX Runtime int8 (`prune_engine.serving`). Throughput: `encode` (tokenizer included) of 32
texts of exactly 128 tokens, at batch 32 and at batch 1; rounds interleaved in rotating order,
medians reported. Quality: STS-B test Spearman (SciFact test nDCG@10 with --scifact, slow), each
variant at the model's own max length. Goals: pruned int8 at least 4x the original's throughput at
batch 32, and at most 1% of STS-B lost against the pruned fp32 model.

--study instead compares candidate int8 settings on one ONNX graph. It chooses a setting, so it
scores on dev data: STS-B dev, and SciFact's train queries with --scifact.

The pruned model is `--export DIR` (ONNX files are written into it when missing) or, by default,
an UNTRAINED one built here: layers 1, 3, 5 of MiniLM (evenly spaced, half the encoder), no
fine-tuning, so its quality figures show what int8 keeps, not what pruning can reach.

    flock /tmp/cpu-heavy.lock env OMP_NUM_THREADS=1 python benchmarks/serving.py --threads 1
    python benchmarks/serving.py --threads 1 --export runs/<run>/export --scifact
    python benchmarks/serving.py --threads 1 --export runs/<run>/export --study --scifact
Writes benchmarks/results/serving_cpu.json and .md; with --study, serving_quantization_cpu.* instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import evenly_spaced  # noqa: E402
from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine import serving  # noqa: E402
from prune_engine.data import load_eval_data  # noqa: E402
from prune_engine.evaluate import evaluate  # noqa: E402
from prune_engine.export import export_embedder, pruning_info  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.prune import kept_indices, prune_embedder  # noqa: E402
from prune_engine.sources import bundled_minilm_dir, load_embedder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LENGTH = 128
N_TEXTS = 32
ROUNDS = {32: 7, 1: 3}  # batch size -> rounds (a batch-1 round encodes the 32 texts one by one)
# Candidate int8 settings for --study: quantize_dynamic's arguments (weight_type by name).
STUDY = {
    "MatMul, per-tensor": {"op_types_to_quantize": ["MatMul"], "per_channel": False},
    "MatMul, per-channel": {"op_types_to_quantize": ["MatMul"], "per_channel": True},
    "MatMul, per-channel, reduce_range": {"op_types_to_quantize": ["MatMul"], "per_channel": True, "reduce_range": True},
    "MatMul, per-channel, uint8 weights": {"op_types_to_quantize": ["MatMul"], "per_channel": True, "weight_type": "QUInt8"},
    "MatMul + Gather, per-channel (chosen)": serving.QUANTIZATION,
}


def untrained_half_minilm(original, directory: Path) -> Path:
    """Layers 1, 3, 5 of MiniLM, every head and neuron: a stock BERT config, not trained."""
    config = original.config
    kept = evenly_spaced(config.num_hidden_layers, config.num_hidden_layers // 2)
    masks = StructureMasks(
        layers=torch.tensor([i in kept for i in range(config.num_hidden_layers)]),
        heads=[torch.ones(h, dtype=torch.bool) for h in config.heads_per_layer],
        ffn=[torch.ones(f, dtype=torch.bool) for f in config.intermediate_sizes],
    )
    pruned = prune_embedder(original, masks).eval()
    info = pruning_info(pruned, "minilm", config, kept_indices(masks), extra={"note": "untrained, for benchmarks"})
    return export_embedder(pruned, directory, info)


def ensure_onnx(export_dir: Path) -> None:
    onnx_dir = export_dir / serving.ONNX_SUBDIR
    if not all((onnx_dir / name).is_file() for name in serving.VARIANT_FILES.values()):
        print(f"writing ONNX files into {onnx_dir}", file=sys.stderr)
        serving.export_onnx(export_dir, quantize=True, overwrite=True)


def torch_int8(embedder):
    """Dynamic int8 in PyTorch: every nn.Linear with per-channel int8 weights, activations per batch."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    encoder = quantize_dynamic(copy.deepcopy(embedder.encoder), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return embedder.with_parts(encoder).eval()


def timing_texts(sentences: list[str], tokenizer) -> list[str]:
    """N_TEXTS real texts (STS-B sentences joined) of at least LENGTH tokens each: cut at LENGTH,
    every batch is exactly N x LENGTH with no padding."""
    texts, start = [], 0
    while len(texts) < N_TEXTS:
        text, start = " ".join(sentences[start : start + 12]), start + 12
        if len(tokenizer(text)["input_ids"]) >= LENGTH:
            texts.append(text)
    return texts


def encode_seconds(model, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    return time.perf_counter() - start


def throughput(models: dict, texts: list[str], batch_size: int) -> dict[str, float]:
    """Texts per second of each model's `encode` at LENGTH tokens: one warm-up each, then
    interleaved rounds in rotating order (load changes slow every model alike), medians."""
    lengths = {name: model.max_length for name, model in models.items()}
    for model in models.values():
        model.max_length = LENGTH
    names = list(models)
    for name in names:
        encode_seconds(models[name], texts[:batch_size], batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(ROUNDS[batch_size]):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            seconds[name].append(encode_seconds(models[name], texts, batch_size))
    for name, model in models.items():
        model.max_length = lengths[name]
    return {name: len(texts) / statistics.median(values) for name, values in seconds.items()}


def file_megabytes(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


def quality(models: dict, scifact: bool) -> dict[str, dict[str, float]]:
    sts = load_eval_data("sts", "test")
    figures = {name: {"sts_spearman": evaluate(model, sts)["spearman"]} for name, model in models.items()}
    if scifact:
        task = load_eval_data("mteb/scifact", "test")
        for name, model in models.items():
            print(f"SciFact: {name}", file=sys.stderr)
            figures[name]["scifact_ndcg_at_10"] = evaluate(model, task)["ndcg_at_10"]
    return figures


def environment(args) -> dict:
    import onnxruntime

    return {**describe(), "onnxruntime": onnxruntime.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "pruned_model": args.export or "UNTRAINED: layers 1, 3, 5 of all-MiniLM-L6-v2, no fine-tuning"}


def variants(original, export_dir: Path) -> tuple[dict, dict[str, float | None]]:
    """The five models, named, with their size on disk (MB; None for PyTorch int8, never saved)."""
    pruned = load_embedder(str(export_dir)).eval()
    onnx_dir = export_dir / serving.ONNX_SUBDIR
    models = {
        "original PyTorch fp32": original,
        "pruned PyTorch fp32": pruned,
        "pruned PyTorch int8": torch_int8(pruned),
        "pruned ONNX fp32": serving.OnnxEmbedder(export_dir, "fp32"),
        "pruned ONNX int8": serving.OnnxEmbedder(export_dir, "int8"),
    }
    onnx = lambda name: onnx_dir / serving.VARIANT_FILES[name]  # noqa: E731
    sizes = {
        "original PyTorch fp32": file_megabytes(bundled_minilm_dir() / "model.safetensors"),
        "pruned PyTorch fp32": file_megabytes(export_dir / "model.safetensors"),
        "pruned PyTorch int8": None,
        "pruned ONNX fp32": file_megabytes(onnx("fp32"), Path(f"{onnx('fp32')}.data")),
        "pruned ONNX int8": file_megabytes(onnx("int8"), Path(f"{onnx('int8')}.data")),
    }
    return models, sizes


def serving_rows(models: dict, sizes: dict, scifact: bool) -> list[dict]:
    texts = timing_texts(load_eval_data("sts", "test").sentences1, models["original PyTorch fp32"].tokenizer)
    speed = {batch: throughput(models, texts, batch) for batch in ROUNDS}
    figures = quality(models, scifact)
    reference = figures["pruned PyTorch fp32"]
    rows = []
    for name in models:
        rows.append({
            "variant": name,
            "size_mb": sizes[name],
            **{f"texts_per_s_batch{b}": speed[b][name] for b in ROUNDS},
            **{f"speedup_batch{b}": speed[b][name] / speed[b]["original PyTorch fp32"] for b in ROUNDS},
            **figures[name],
            "sts_vs_pruned_fp32": figures[name]["sts_spearman"] / reference["sts_spearman"] - 1,
        })
    return rows


def goals(rows: list[dict]) -> dict:
    by_name = {row["variant"]: row for row in rows}
    figures = lambda row: {k: row[k] for k in ("sts_spearman", "scifact_ndcg_at_10") if k in row}  # noqa: E731
    result = {}
    for backend in ("ONNX", "PyTorch"):
        int8, fp32 = by_name[f"pruned {backend} int8"], by_name[f"pruned {backend} fp32"]
        result[backend] = {
            "speedup_batch32_vs_original": int8["speedup_batch32"],
            "speed_goal_4x_met": int8["speedup_batch32"] >= 4,
            "sts_loss_vs_pruned_fp32": -int8["sts_vs_pruned_fp32"],
            "quality_goal_1pct_met": int8["sts_vs_pruned_fp32"] >= -0.01,
            "quality_gate": serving.quality_gate(figures(fp32), figures(int8)),
        }
    return result


def markdown(rows: list[dict], goal: dict, env: dict) -> str:
    scifact = any("scifact_ndcg_at_10" in row for row in rows)
    lines = [
        f"CPU: {env['machine']}, {env['threads']} thread(s); torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; load average {env['load_before']} before, {env['load_after']} after; "
        f"{env['date']}.",
        f"Pruned model: {env['pruned_model']}.",
        f"Command: `{env['command']}`",
        "",
        f"Encode throughput (tokenizer included), {N_TEXTS} texts of exactly {LENGTH} tokens; medians of interleaved rounds.",
        "",
        "| variant | size MB | texts/s batch 32 | x original | texts/s batch 1 | x original | STS-B test | vs pruned fp32 |"
        + (" SciFact nDCG@10 |" if scifact else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if scifact else ""),
    ]
    for row in rows:
        size = "—" if row["size_mb"] is None else f"{row['size_mb']:.1f}"
        lines.append(
            f"| {row['variant']} | {size} | {row['texts_per_s_batch32']:.1f} | {row['speedup_batch32']:.2f}x | "
            f"{row['texts_per_s_batch1']:.1f} | {row['speedup_batch1']:.2f}x | {row['sts_spearman']:.2f} | "
            f"{row['sts_vs_pruned_fp32']:+.2%} |" + (f" {row['scifact_ndcg_at_10']:.2f} |" if scifact else "")
        )
    lines.append("")
    for backend, result in goal.items():
        lines.append(
            f"- {backend} int8: {result['speedup_batch32_vs_original']:.2f}x the original at batch 32 "
            f"(goal 4x: {'met' if result['speed_goal_4x_met'] else 'not met'}); STS-B "
            f"{-result['sts_loss_vs_pruned_fp32']:+.2%} vs pruned fp32 (goal within -1%: "
            f"{'met' if result['quality_goal_1pct_met'] else 'not met'}); gate: {result['quality_gate']['decision']}."
        )
    return "\n".join(lines)


def last_layer_matmuls(fp32_path: Path) -> list[str]:
    """The MatMul nodes of the encoder's last layer, found by the module scope the exporter records."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    scopes = {node.name: {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
              for node in graph.node if node.op_type == "MatMul"}
    layers = [int(index) for scope in scopes.values() for index in re.findall(r"encoder\.layer\.(\d+)'", scope)]
    if not layers:
        sys.exit(f"{fp32_path}: the graph records no layer scopes; export it again to study its last layer")
    return [name for name, scope in scopes.items() if f"encoder.layer.{max(layers)}'" in scope]


def study(export_dir: Path, work: Path, scifact: bool) -> list[dict]:
    """Each candidate int8 setting on the same fp32 graph: throughput at batch 32 (interleaved), file
    size, and on dev data STS-B Spearman, cosine to fp32 over its sentences, SciFact with `scifact`."""
    fp32_path = export_dir / serving.ONNX_SUBDIR / serving.VARIANT_FILES["fp32"]
    candidates = {**STUDY, "MatMul + Gather, per-channel, last layer in fp32":
                  {**serving.QUANTIZATION, "nodes_to_exclude": last_layer_matmuls(fp32_path)}}
    paths, directories = {"fp32": fp32_path}, {"fp32": export_dir}
    for index, (name, settings) in enumerate(candidates.items()):
        directories[name] = work / f"candidate{index}"
        shutil.copytree(export_dir, directories[name], ignore=shutil.ignore_patterns("*.safetensors", serving.ONNX_SUBDIR))
        (directories[name] / serving.ONNX_SUBDIR).mkdir()
        paths[name] = directories[name] / serving.ONNX_SUBDIR / serving.VARIANT_FILES["int8"]
        serving.quantize_onnx(fp32_path, paths[name], settings)

    def load(name: str) -> serving.OnnxEmbedder:
        return serving.OnnxEmbedder(directories[name], "fp32" if name == "fp32" else "int8")

    models = {name: load(name) for name in directories}
    sts = load_eval_data("sts", "dev")
    speed = throughput(models, timing_texts(sts.sentences1, models["fp32"].tokenizer), 32)
    sentences = sorted({*sts.sentences1, *sts.sentences2})
    reference = models["fp32"].encode(sentences)
    rows = []
    for name, model in models.items():
        cosines = (model.encode(sentences) * reference).sum(axis=1)
        rows.append({
            "setting": name,
            "quantize_dynamic": None if name == "fp32" else dict(candidates[name]),
            "size_mb": file_megabytes(paths[name]),
            "texts_per_s_batch32": speed[name],
            "sts_dev_spearman": evaluate(model, sts)["spearman"],
            "min_cosine_to_fp32": float(cosines.min()),
            "mean_cosine_to_fp32": float(cosines.mean()),
        })
    del models, model  # each ONNX Runtime session keeps its peak arena: seven at SciFact's lengths took 14 GB
    if scifact:
        task = load_eval_data("mteb/scifact", "train")
        for row in rows:
            print(f"SciFact train queries: {row['setting']}", file=sys.stderr)
            row["scifact_train_ndcg_at_10"] = evaluate(load(row["setting"]), task)["ndcg_at_10"]
    return rows


def study_markdown(rows: list[dict], env: dict) -> str:
    lines = [
        f"CPU: {env['machine']}, {env['threads']} thread(s), onnxruntime {env['onnxruntime']}; load average "
        f"{env['load_before']} before, {env['load_after']} after; {env['date']}. Model: {env['pruned_model']}.",
        f"Command: `{env['command']}`",
        "",
        "Dev data only (the study chooses a setting): STS-B dev, SciFact's train queries; cosines over STS-B dev.",
        "",
        "| int8 setting | size MB | texts/s batch 32 | STS-B dev | SciFact train nDCG@10 | min cosine to fp32 | mean cosine |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fp32 = rows[0].get("scifact_train_ndcg_at_10")
    for row in rows:
        scifact = row.get("scifact_train_ndcg_at_10")
        lines.append(
            f"| {row['setting']} | {row['size_mb']:.1f} | {row['texts_per_s_batch32']:.1f} | {row['sts_dev_spearman']:.2f} | "
            + (f"{scifact:.2f} ({scifact / fp32:.2%}) | " if scifact is not None else "not run (--scifact) | ")
            + f"{row['min_cosine_to_fp32']:.4f} | {row['mean_cosine_to_fp32']:.4f} |"
        )
    return "\n".join(lines)


def write(name: str, data: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", help="a pruned export directory (default: an untrained half MiniLM built here)")
    parser.add_argument("--threads", type=int, help="threads for PyTorch and ONNX Runtime alike (default: torch's)")
    parser.add_argument("--scifact", action="store_true",
                        help="also SciFact nDCG@10: test queries, or train queries with --study (slow: minutes per variant)")
    parser.add_argument("--study", action="store_true", help="instead compare int8 quantisation settings, on dev data")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args)
    original = load_embedder("minilm").eval()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as work:
        export_dir = Path(args.export).resolve() if args.export else untrained_half_minilm(original, Path(work) / "export")
        ensure_onnx(export_dir)
        if args.study:
            study_rows = study(export_dir, Path(work), args.scifact)
        else:
            rows = serving_rows(*variants(original, export_dir), args.scifact)
    finished(env)
    if args.study:
        write("serving_quantization_cpu", {"environment": env, "rows": study_rows}, study_markdown(study_rows, env))
    else:
        write("serving_cpu", {"environment": env, "rows": rows, "goals": goals(rows)}, markdown(rows, goals(rows), env))


if __name__ == "__main__":
    main()
