"""How well the calibrated latency model predicts real pruned models on this machine.

1. Calibrates `prune_engine.latency` on all-MiniLM-L6-v2's shape (random weights) at batch 32 x 128
   (throughput) and batch 1 x 128 (latency).
2. Prunes the real MiniLM weights (`prune_encoder` with random masks) to random uneven structures
   (layers dropped, heads and FFN neurons per layer drawn at random), times them interleaved with
   the unpruned model, and compares measured latency and speedup with the model's prediction and
   with the speedup FLOPs predict.
3. Calibrates BGE-M3's shape (random weights) at batch 1 x 128, to show the fit carries over to a
   model 24x bigger per layer.

Encoder forward only (embeddings + layers; no tokenizer, no pooling), fp32, random full-length
token ids, medians of interleaved rounds.

    flock /tmp/cpu-heavy.lock env OMP_NUM_THREADS=1 python benchmarks/latency_model.py --threads 1
Writes benchmarks/results/latency_model_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.accounting import count_parameters, flops_per_token  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.latency import LatencyModel, calibrate, time_interleaved  # noqa: E402
from prune_engine.presets import bge_m3_config  # noqa: E402
from prune_engine.prune import prune_encoder  # noqa: E402
from prune_engine.sources import bundled_minilm_dir, load_encoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MINILM_SETTINGS = [(32, 128, 7), (1, 128, 21)]  # batch, length, rounds of the real-model comparison
BGE_M3_SETTING = (1, 128)


def random_masks(config, generator: torch.Generator) -> StructureMasks:
    """Each layer dropped with probability 1/4 (at least one kept); each kept layer a random number
    of random heads (1..all) and FFN neurons (1..all)."""
    n_layers = config.num_hidden_layers
    layers = torch.rand(n_layers, generator=generator) >= 0.25
    layers[int(torch.randint(n_layers, (1,), generator=generator))] = True
    heads, ffn = [], []
    for n_heads, n_neurons in zip(config.heads_per_layer, config.intermediate_sizes, strict=True):
        for total, out in ((n_heads, heads), (n_neurons, ffn)):
            keep = int(torch.randint(1, total + 1, (1,), generator=generator))
            mask = torch.zeros(total, dtype=torch.bool)
            mask[torch.randperm(total, generator=generator)[:keep]] = True
            out.append(mask)
    return StructureMasks(layers, heads, ffn)


def relative_error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def compare_real(original, structures_and_models, model: LatencyModel, rounds: int) -> list[dict]:
    """Times the real unpruned and pruned models interleaved; one row per pruned structure."""
    config, conditions = original.config, model.conditions
    generator = torch.Generator().manual_seed(conditions.sequence_length)
    input_ids = torch.randint(5, config.vocab_size, (conditions.batch_size, conditions.sequence_length),
                              generator=generator)
    models = [original] + [pruned for _, pruned in structures_and_models]
    seconds, _ = time_interleaved(models, input_ids, rounds, conditions.clock)
    full_seconds, full_flops = seconds[0], flops_per_token(config, None, conditions.sequence_length)
    full_encoder = count_parameters(config).encoder
    rows = [{"structure": "unpruned", "heads": list(config.heads_per_layer), "ffn": list(config.intermediate_sizes),
             "encoder_removed": 0.0, "measured_ms": 1000 * full_seconds, "predicted_ms": 1000 * model.full_latency,
             "latency_error": relative_error(model.full_latency, full_seconds)}]
    for (structure, _), measured in zip(structures_and_models, seconds[1:], strict=True):
        predicted, measured_speedup = model.predict(structure), full_seconds / measured
        flop_speedup = full_flops / flops_per_token(config, structure, conditions.sequence_length)
        rows.append({
            "structure": structure.describe(), "heads": list(structure.heads_per_layer),
            "ffn": list(structure.intermediate_sizes),
            "encoder_removed": 1 - count_parameters(config, structure).encoder / full_encoder,
            "measured_ms": 1000 * measured, "predicted_ms": 1000 * predicted,
            "latency_error": relative_error(predicted, measured),
            "measured_speedup": measured_speedup, "predicted_speedup": model.speedup(structure),
            "speedup_error": relative_error(model.speedup(structure), measured_speedup),
            "flop_speedup": flop_speedup, "flop_speedup_error": relative_error(flop_speedup, measured_speedup),
        })
    return rows


def summary(rows: list[dict]) -> dict:
    pruned = [r for r in rows if "speedup_error" in r]
    absolute = lambda key: [abs(r[key]) for r in pruned]  # noqa: E731
    return {key: {"mean": statistics.fmean(absolute(key)), "max": max(absolute(key))}
            for key in ("latency_error", "speedup_error", "flop_speedup_error")}


def fit_summary(model: LatencyModel) -> dict:
    return {"mean_relative_error": model.fit.mean_relative_error, "max_relative_error": model.fit.max_relative_error,
            "rounds": model.fit.rounds, "calibration_seconds": model.fit.wall_seconds}


def minilm_section(n_structures: int, seed: int, clock: str) -> list[dict]:
    original = load_encoder(bundled_minilm_dir()).eval()
    generator = torch.Generator().manual_seed(seed)
    structures_and_models = []
    for _ in range(n_structures):
        masks = random_masks(original.config, generator)
        structures_and_models.append((masks.kept_structure(original.config.vocab_size),
                                      prune_encoder(original, masks).eval()))
    sections = []
    for batch, length, rounds in MINILM_SETTINGS:
        print(f"minilm: calibrating at {batch} x {length}, {clock} clock", file=sys.stderr)
        model = calibrate(original.config, batch, length, seed=seed, clock=clock)
        print(f"minilm: {n_structures} pruned real models at {batch} x {length}, {rounds} rounds", file=sys.stderr)
        rows = compare_real(original, structures_and_models, model, rounds)
        sections.append({"model": "all-MiniLM-L6-v2", "latency_model": model.to_dict(), "fit": fit_summary(model),
                         "rows": rows, "summary": summary(rows)})
    return sections


def bge_m3_section(seed: int, clock: str) -> dict:
    batch, length = BGE_M3_SETTING
    print(f"bge-m3 shape: calibrating at {batch} x {length}, {clock} clock", file=sys.stderr)
    model = calibrate(bge_m3_config(), batch, length, seed=seed, clock=clock)
    return {"model": "BGE-M3 shape (random weights)", "latency_model": model.to_dict(), "fit": fit_summary(model)}


def layers_text(heads: list[int], ffn: list[int]) -> str:
    return f"{len(heads)} layers: heads {'/'.join(map(str, heads))}, FFN {'/'.join(map(str, ffn))}"


def coefficient_line(section: dict) -> str:
    model, fit = section["latency_model"], section["fit"]
    conditions = model["conditions"]
    full = LatencyModel.from_dict(model).full_latency
    return (f"| {section['model']} | {conditions['clock']} | {conditions['batch_size']} x {conditions['sequence_length']} | "
            f"{1000 * model['base']:.2f} | {1000 * model['layer_fixed']:.2f} | {1000 * model['per_head']:.3f} | "
            f"{1e6 * model['per_neuron']:.2f} | {1000 * full:.1f} | {fit['mean_relative_error']:.1%} / "
            f"{fit['max_relative_error']:.1%} | {fit['rounds']} | {fit['calibration_seconds']:.0f} |")


def real_table(section: dict) -> list[str]:
    conditions = section["latency_model"]["conditions"]
    lines = [f"### Real MiniLM pruned, batch {conditions['batch_size']} x {conditions['sequence_length']}, "
             f"{conditions['clock']} clock", "",
             "| structure | encoder removed | measured ms | predicted ms | error | measured speedup | "
             "predicted speedup | error | FLOP speedup | error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in section["rows"]:
        speedups = ("| | | | | " if "measured_speedup" not in row else
                    f"{row['measured_speedup']:.2f}x | {row['predicted_speedup']:.2f}x | {row['speedup_error']:+.1%} | "
                    f"{row['flop_speedup']:.2f}x | {row['flop_speedup_error']:+.1%} |")
        name = "unpruned" if row["structure"] == "unpruned" else layers_text(row["heads"], row["ffn"])
        lines.append(f"| {name} | {row['encoder_removed']:.1%} | {row['measured_ms']:.1f} | {row['predicted_ms']:.1f} | "
                     f"{row['latency_error']:+.1%} | {speedups}")
    errors = section["summary"]
    lines += ["", "Absolute relative error over the pruned structures, mean / max: latency "
              f"{errors['latency_error']['mean']:.1%} / {errors['latency_error']['max']:.1%}, speedup "
              f"{errors['speedup_error']['mean']:.1%} / {errors['speedup_error']['max']:.1%} "
              f"(FLOPs' speedup: {errors['flop_speedup_error']['mean']:.1%} / {errors['flop_speedup_error']['max']:.1%}).", ""]
    return lines


def held_out_table(section: dict) -> list[str]:
    conditions = section["latency_model"]["conditions"]
    lines = [f"### {section['model']}, {conditions['batch_size']} x {conditions['sequence_length']}, "
             f"{conditions['clock']} clock: "
             "held-out random structures of the calibration", "",
             "| structure | measured ms | predicted ms | error |", "|---|---:|---:|---:|"]
    for row in section["latency_model"]["fit"]["held_out"]:
        structure = row["structure"]
        lines.append(f"| {layers_text(structure['heads_per_layer'], structure['intermediate_sizes'])} | "
                     f"{1000 * row['measured']:.1f} | {1000 * row['predicted']:.1f} | "
                     f"{relative_error(row['predicted'], row['measured']):+.1%} |")
    return lines + [""]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"Command: `{env['command']}`", "",
             f"Machine: {env['machine']}; torch {env['torch']}, {env['threads']} thread(s), fp32; load average "
             f"(1/5/15 min) {env['load_before']} before, {env['load_after']} after; {env['date']}.", "",
             "## Coefficients (encoder forward: embeddings + layers, no tokenizer, no pooling)", "",
             "| model | clock | batch x length | base ms | layer fixed ms | per head ms | per neuron us | full model "
             "ms (predicted) | held-out error mean / max | rounds | calibration s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    minilm = [s for clock in report["clocks"].values() for s in clock["minilm"]]
    sections = minilm + [clock["bge_m3"] for clock in report["clocks"].values() if "bge_m3" in clock]
    lines += [coefficient_line(s) for s in sections] + [""]
    for section in minilm:
        lines += real_table(section)
    for section in sections:
        lines += held_out_table(section)
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the box is shared)")
    parser.add_argument("--structures", type=int, default=10, help="random pruned MiniLM structures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-bge-m3", action="store_true", help="leave out BGE-M3's shape (about a minute)")
    parser.add_argument("--clocks", nargs="+", choices=["wall", "cpu"], default=["wall", "cpu"],
                        help="wall: elapsed time; cpu: process CPU time, stable on a shared box (one thread only)")
    args = parser.parse_args()
    if "cpu" in args.clocks and args.threads != 1:
        parser.error("--clocks cpu measures CPU time, a latency only with --threads 1")
    torch.set_num_threads(args.threads)
    environment = describe()
    report = {"environment": environment, "clocks": {}}
    for clock in args.clocks:
        report["clocks"][clock] = {"minilm": minilm_section(args.structures, args.seed, clock)}
        if not args.skip_bge_m3:
            report["clocks"][clock]["bge_m3"] = bge_m3_section(args.seed, clock)
    finished(environment)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    write_atomic(RESULTS / "latency_model_cpu.json", json.dumps(report, indent=2))
    write_atomic(RESULTS / "latency_model_cpu.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
