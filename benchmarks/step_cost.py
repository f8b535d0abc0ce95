"""What one pruning step costs against a plain fine-tuning step of the same model on the same batch.

Pruning step (trainer.py's mask phase): the student's forward with sampled L0 gates on every
layer, head and neuron, the distillation and task losses, the expected-size gaps and the
Lagrangian; backward; AdamW on weights and gate logits, gradient ascent on the multipliers.
Plain step: the same objective, losses and optimizer with no gates and no Lagrangian.
The teacher's forward is the same for both; it is timed beside them and left out of the ratio.

Inputs are full-length random token ids (cost does not depend on the words; padding would make
"length" vague), scored-pair batches: `batch` pairs = 2 x `batch` texts, with CoSENT as the task loss.
Steps are interleaved (plain, pruning, plain, ...) and medians reported, so machine load hits both.

CPU: the real all-MiniLM-L6-v2, batch 16 pairs, length 128, fp32.
GPU (when CUDA is present): BGE-M3's shape with random weights and BGE-M3's sparse / ColBERT
heads, batch 16, length 512, bf16 autocast, gradient checkpointing as configs/bge_m3_18_12_3072.yaml sets
it; with peak memory.

    python benchmarks/step_cost.py             # CUDA if present, else CPU
Writes benchmarks/results/step_cost_<device>[_<n>thread].json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.batches import Batch  # noqa: E402
from prune_engine.config import load_config  # noqa: E402
from prune_engine.embedder import Embedder  # noqa: E402
from prune_engine.l0 import L0Masks  # noqa: E402
from prune_engine.lagrangian import Lagrangian  # noqa: E402
from prune_engine.modeling_prunable_encoder import PrunableEncoderModel  # noqa: E402
from prune_engine.objective import PruningObjective, weights_and_gates_optimizer  # noqa: E402
from prune_engine.presets import bge_m3_config  # noqa: E402
from prune_engine.sources import load_embedder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30


def random_bge_m3() -> Embedder:
    """BGE-M3's encoder shape and output heads, random weights (speed and memory do not depend on them)."""
    hidden = bge_m3_config().hidden_size
    return Embedder(PrunableEncoderModel(bge_m3_config()), tokenizer=None, pooling="cls",
                    sparse_linear=nn.Linear(hidden, 1), colbert_linear=nn.Linear(hidden, hidden), source="bge-m3 shape")


class Step:
    """One optimizer step of a PruningObjective, with or without gates, as the trainer takes it."""

    def __init__(self, teacher: Embedder, config, with_gates: bool, device: torch.device):
        student = copy.deepcopy(teacher).requires_grad_(True).to(device).train()
        if config.freeze_embeddings:
            student.encoder.embeddings.word_embeddings.requires_grad_(False)
        if config.gradient_checkpointing:
            student.encoder.gradient_checkpointing_enable()
        masks = lagrangian = target = None
        if with_gates:
            target = config.size_target(student.config, student.output_head_parameters())
            masks = L0Masks(student.config, tuple(config.structures)).to(device)
            lagrangian = Lagrangian(target.constraint_names()).to(device)
        self.objective = PruningObjective(student, config, "scored_pairs", masks, lagrangian, target).to(device)
        self.weights = [p for p in student.parameters() if p.requires_grad]
        self.optimizers = [weights_and_gates_optimizer(student, masks, config)]
        if lagrangian is not None:
            self.optimizers.append(lagrangian.optimizer(config.optimizer.lagrangian_lr))
        self.max_grad_norm = config.optimizer.max_grad_norm

    def __call__(self, features: dict, batch: Batch, teacher_out, autocast) -> None:
        with autocast():
            losses = self.objective([features], batch, [teacher_out], ramp=1.0)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.weights, self.max_grad_norm)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def timed(function, device: torch.device) -> tuple[float, float]:
    """(seconds, peak GiB allocated above what was resident before; 0 on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, (torch.cuda.max_memory_allocated() - resident) / GIB
    return time.perf_counter() - start, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core); on a machine "
                        "another job keeps busy, 1 avoids OpenMP threads waiting on a descheduled sibling")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        config = load_config(ROOT / "configs" / "bge_m3_18_12_3072.yaml", ["batch_size=16", "max_length=512"])
        teacher, model_name = random_bge_m3(), "BGE-M3 shape (random weights), 18/12/3072 target"
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        config = load_config(ROOT / "configs" / "stsb_minilm_half.yaml", ["batch_size=16", "max_length=128"])
        teacher, model_name = load_embedder("minilm"), "all-MiniLM-L6-v2, 50% encoder target"
        autocast = contextlib.nullcontext
    teacher = teacher.to(device).eval().requires_grad_(False)
    steps = {"plain": Step(teacher, config, False, device), "pruning": Step(teacher, config, True, device)}

    n = config.batch_size
    input_ids = torch.randint(5, teacher.config.vocab_size, (2 * n, config.max_length), device=device)
    features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    batch = Batch("scored_pairs", [""] * (2 * n), n, torch.rand(n))

    def teacher_forward():
        with torch.no_grad(), autocast():
            return teacher(features)

    teacher_out = teacher_forward()
    timed_work = {
        "teacher": teacher_forward,
        **{name: lambda step=step: step(features, batch, teacher_out, autocast) for name, step in steps.items()},
    }
    seconds: dict[str, list[float]] = {name: [] for name in timed_work}
    peak: dict[str, float] = dict.fromkeys(timed_work, 0.0)
    environment = describe(device)
    for round_index in range(args.rounds + 1):  # round 0 warms up (optimizer state, kernels)
        for name, work in timed_work.items():
            elapsed, extra = timed(work, device)
            peak[name] = max(peak[name], extra)
            if round_index:
                seconds[name].append(elapsed)
    teacher_seconds, plain, pruning = (statistics.median(seconds[name]) for name in timed_work)
    result = {
        "environment": {**finished(environment), "precision": "bf16 autocast" if device.type == "cuda" else "fp32"},
        "model": model_name,
        "batch_pairs": n,
        "length": config.max_length,
        "gradient_checkpointing": config.gradient_checkpointing,
        "rounds": args.rounds,
        "teacher_forward_ms": 1000 * teacher_seconds,
        "plain_step_ms": 1000 * plain,
        "pruning_step_ms": 1000 * pruning,
        "pruning_over_plain": pruning / plain,
        "peak_gib_above_resident": peak if device.type == "cuda" else None,
        "resident_gib": torch.cuda.memory_allocated() / GIB if device.type == "cuda" else None,
    }
    memory = ""
    if device.type == "cuda":
        memory = (f"; peak memory above the resident {result['resident_gib']:.1f} GiB: plain {peak['plain']:.1f} GiB, "
                  f"pruning {peak['pruning']:.1f} GiB")
    summary = (
        f"{model_name}, {2 * n} texts x {config.max_length} tokens, {result['environment']['precision']} on "
        f"{environment['machine']} ({environment['threads']} threads, load {environment['load_before']}): "
        f"plain step {result['plain_step_ms']:.0f} ms, pruning step {result['pruning_step_ms']:.0f} ms "
        f"(x{result['pruning_over_plain']:.2f}); teacher forward {result['teacher_forward_ms']:.0f} ms{memory}."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"step_cost_{device.type}" + (f"_{args.threads}thread" if args.threads else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
