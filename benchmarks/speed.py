"""Inference speed of pruned encoders against their original, beside the speedup FLOPs predict.

Times the encoder forward pass (embeddings + layers, what pruning changes; no tokenizer) on
full-length random token ids, so every structure is measured at exactly the length its FLOPs are
counted for. Repetitions are interleaved (one of each model per round, in rotating order) and
medians reported, so a machine whose load changes during the run slows every model alike and the
ratios hold.

Models: the real all-MiniLM-L6-v2 cut to ~50% and ~70% of its encoder, once by whole layers /
all heads kept, once uniformly narrower and once with uneven heads and FFN widths of the same
total size (so the uneven-heads effect shows at equal FLOPs); and BGE-M3's exact shape with
random weights, sliced to the original design's 18 layers / 12 heads / FFN 3072.

CPU: fp32, batch 32 (throughput) and batch 1 (latency) at lengths 128 and 512; BGE-M3 on CPU only
at batch 4 / length 128 and batch 1 / length 512, 3 rounds, so it finishes in minutes. GPU (when
CUDA is present): bf16, the same settings for both models with more rounds.

    python benchmarks/speed.py                 # CUDA if present, else CPU
    python benchmarks/speed.py --device cpu
Writes benchmarks/results/speed_<device>[_<n>thread].json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines import evenly_spaced  # noqa: E402

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.accounting import Structure, count_parameters, flops_per_token  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.modeling_prunable_encoder import PrunableEncoderModel  # noqa: E402
from prune_engine.presets import bge_m3_config  # noqa: E402
from prune_engine.prune import prune_encoder  # noqa: E402
from prune_engine.sources import bundled_minilm_dir, load_encoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Shape:
    """A pruned structure: which layers stay, and per kept layer its heads and FFN width."""

    name: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]


@dataclass(frozen=True)
class Setting:
    batch: int
    length: int
    rounds: int


def uniform(name: str, layers: list[int], heads: int, ffn: int) -> Shape:
    return Shape(name, tuple(layers), (heads,) * len(layers), (ffn,) * len(layers))


MINILM_SHAPES = [
    uniform("50%: 3 layers, all 12 heads, FFN 1536", evenly_spaced(6, 3), 12, 1536),
    uniform("50%: 6 layers x 6 heads, FFN 768", list(range(6)), 6, 768),
    Shape("50%: 6 layers, uneven heads 12..2, FFN 1536..256", tuple(range(6)), (12, 9, 6, 4, 3, 2),
          (1536, 1152, 768, 512, 384, 256)),
    uniform("69%: 3 layers, all 12 heads, FFN 640", evenly_spaced(6, 3), 12, 640),
    uniform("70%: 6 layers x 4 heads, FFN 432", list(range(6)), 4, 432),
    Shape("70%: 6 layers, uneven heads 8..1, FFN 864..108", tuple(range(6)), (8, 6, 4, 3, 2, 1),
          (864, 648, 432, 324, 216, 108)),
]
BGE_M3_SHAPES = [uniform("18 layers, 12 heads, FFN 3072", evenly_spaced(24, 18), 12, 3072)]

SETTINGS = {
    ("cpu", "minilm"): [Setting(32, 128, 7), Setting(32, 512, 5), Setting(1, 128, 15), Setting(1, 512, 11)],
    ("cpu", "bge-m3"): [Setting(4, 128, 3), Setting(1, 512, 3)],
    ("cuda", "minilm"): [Setting(32, 128, 30), Setting(32, 512, 30), Setting(1, 128, 50), Setting(1, 512, 50)],
    ("cuda", "bge-m3"): [Setting(32, 128, 15), Setting(32, 512, 10), Setting(1, 128, 30), Setting(1, 512, 30)],
}


def masks_for(config, shape: Shape) -> StructureMasks:
    """The first `heads[i]` heads and `ffn[i]` neurons of each kept layer: which ones does not
    change the speed, only how many."""
    layers = torch.zeros(config.num_hidden_layers, dtype=torch.bool)
    layers[list(shape.layers)] = True
    heads = [torch.zeros(n, dtype=torch.bool) for n in config.heads_per_layer]
    ffn = [torch.zeros(n, dtype=torch.bool) for n in config.intermediate_sizes]
    for layer, n_heads, n_neurons in zip(shape.layers, shape.heads, shape.ffn, strict=True):
        heads[layer][:n_heads] = True
        ffn[layer][:n_neurons] = True
    return StructureMasks(layers, heads, ffn)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def forward_seconds(model: PrunableEncoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    sync(input_ids.device)
    start = time.perf_counter()
    model(input_ids=input_ids, attention_mask=attention_mask)
    sync(input_ids.device)
    return time.perf_counter() - start


def time_interleaved(models: dict[str, PrunableEncoderModel], setting: Setting, vocab_size: int,
                     device: torch.device) -> dict[str, float]:
    """Median seconds per forward of each model; one warm-up forward each, then `rounds` rounds."""
    generator = torch.Generator().manual_seed(setting.length)
    input_ids = torch.randint(5, vocab_size, (setting.batch, setting.length), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    names = list(models)
    for name in names:
        forward_seconds(models[name], input_ids, attention_mask)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(setting.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            times[name].append(forward_seconds(models[name], input_ids, attention_mask))
    return {name: statistics.median(values) for name, values in times.items()}


def family_rows(family: str, original: PrunableEncoderModel, shapes: list[Shape], device: torch.device,
                dtype: torch.dtype) -> list[dict]:
    config = original.config
    pruned = {shape.name: prune_encoder(original, masks_for(config, shape)) for shape in shapes}
    models = {"original": original, **pruned}
    for model in models.values():
        model.to(device=device, dtype=dtype).eval()
    full_encoder = count_parameters(config).encoder
    rows = []
    for setting in SETTINGS[(device.type, family)]:
        print(f"{family}: batch {setting.batch}, length {setting.length}, {setting.rounds} rounds", file=sys.stderr)
        seconds = time_interleaved(models, setting, config.vocab_size, device)
        full_flops = flops_per_token(config, None, setting.length)
        for shape in shapes:
            structure = Structure(shape.heads, shape.ffn, config.vocab_size)
            rows.append({
                "model": family,
                "structure": shape.name,
                "encoder_removed": 1 - count_parameters(config, structure).encoder / full_encoder,
                "batch": setting.batch,
                "length": setting.length,
                "rounds": setting.rounds,
                "original_ms": 1000 * seconds["original"],
                "pruned_ms": 1000 * seconds[shape.name],
                "original_seq_per_s": setting.batch / seconds["original"],
                "pruned_seq_per_s": setting.batch / seconds[shape.name],
                "measured_speedup": seconds["original"] / seconds[shape.name],
                "flop_speedup": full_flops / flops_per_token(config, structure, setting.length),
            })
    return rows


def markdown(rows: list[dict], environment: dict) -> str:
    lines = [
        f"Device: {environment['machine']} ({environment['dtype']}), torch {environment['torch']}, "
        f"{environment['threads']} threads; load average {environment['load_before']} before, "
        f"{environment['load_after']} after.",
        "",
        "| model | structure | encoder removed | batch x length | original ms | pruned ms | pruned seq/s | "
        "speedup | FLOP speedup | speedup / FLOP |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['structure']} | {row['encoder_removed']:.1%} | {row['batch']} x {row['length']} | "
            f"{row['original_ms']:.1f} | {row['pruned_ms']:.1f} | {row['pruned_seq_per_s']:.1f} | "
            f"{row['measured_speedup']:.2f}x | {row['flop_speedup']:.2f}x | "
            f"{row['measured_speedup'] / row['flop_speedup']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core); on a machine "
                        "another job keeps busy, 1 avoids OpenMP threads waiting on a descheduled sibling")
    parser.add_argument("--models", nargs="+", choices=["minilm", "bge-m3"], default=["minilm", "bge-m3"])
    args = parser.parse_args()
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_type)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    environment = {**describe(device), "dtype": str(dtype).removeprefix("torch.")}
    rows = []
    if "minilm" in args.models:
        rows += family_rows("minilm", load_encoder(bundled_minilm_dir()), MINILM_SHAPES, device, dtype)
    if "bge-m3" in args.models:
        rows += family_rows("bge-m3", PrunableEncoderModel(bge_m3_config()), BGE_M3_SHAPES, device, dtype)
    finished(environment)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, environment)
    name = f"speed_{device.type}" + (f"_{args.threads}thread" if args.threads else "")
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
