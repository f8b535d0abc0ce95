"""The documents recipe's training step, with the teacher's outputs computed afresh and read back.

A run distils on the same documents and sentences again on every pass over them (SciFact's 4,924
training abstracts are drawn about 3.3 times in 1,000 steps of 16), and the teacher never changes,
so `teacher.py` keeps its outputs. This times the recipe's step (configs/minilm_documents.yaml,
documents = SciFact's abstracts, MiniLM, one thread) four ways on the same steps:
  recomputed  the teacher encodes each padding group as a batch every step (teacher_cache_mb=0:
              how every step ran before the cache);
  first pass  the cache on, empty: each text encoded on its own (its first sight);
  cached      the cache on and holding those texts (every later pass);
  cached, bf16  the same with `precision: amp_bf16` (autocast; on CPUs with AVX512-BF16 or AMX the
              matrix products run in bfloat16, weights and optimiser stay fp32).
Rounds alternate the variants, each from a fresh run at step 0, and report the median step's CPU
time (one thread: CPU time is what the step costs on an otherwise idle core; wall time on a shared
box swings with the other jobs) and wall time.

    python benchmarks/step_time.py --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.batches import BatchSchedule, make_batch  # noqa: E402
from prune_engine.config import load_config  # noqa: E402
from prune_engine.run_dir import RunDirectory  # noqa: E402
from prune_engine.run_inputs import load_inputs  # noqa: E402
from prune_engine.teacher import Teacher  # noqa: E402
from prune_engine.trainer import PruningRun, plan_steps  # noqa: E402

DOCUMENTS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
# name: (teacher_cache_mb, precision)
VARIANTS = {"recomputed": (0, "fp32"), "first pass": (4096, "fp32"), "cached": (4096, "fp32"),
            "cached, bf16": (4096, "amp_bf16")}


def fresh_run(inputs, cache_mb: int, precision: str, workspace: Path) -> PruningRun:
    """A run at step 0 over already loaded inputs (data, documents, teacher), as `PruningRun.run` sets it up."""
    config = load_config(ROOT / "configs" / "minilm_documents.yaml",
                         [f"documents={DOCUMENTS}", f"teacher_cache_mb={cache_mb}", f"precision={precision}",
                          f"output_dir={workspace}"])
    run = PruningRun(config)
    run.inputs = inputs
    run.schedule = BatchSchedule(len(inputs.data), inputs.training_documents, config.batch_size,
                                 config.documents_per_batch, config.seed)
    run.total_steps, run.mask_steps, run.ramp_steps = plan_steps(config, run.schedule.steps_per_epoch, True)
    run.teacher = Teacher(inputs.teacher, inputs.length, config.teacher_cache_mb)
    torch.manual_seed(config.seed)
    run._start()
    return run


def fill_cache(run: PruningRun, steps: int) -> None:
    """The teacher's outputs for every text of the first `steps` steps, as an earlier pass leaves them."""
    for step in range(steps):
        batch = make_batch(run.inputs.data, run.schedule.indices(step), run.schedule.documents_of(step))
        for texts in batch.padding_groups:
            run.teacher.outputs(texts, run.student.tokenize(texts, run.inputs.length), run.autocast)


def timed_steps(run: PruningRun, steps: int) -> list[tuple[float, float]]:
    """(CPU seconds, wall seconds) of each step."""
    times = []
    for _ in range(steps):
        cpu, wall = time.process_time(), time.perf_counter()
        run._train_step()
        run.step += 1
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    environment = describe()
    with tempfile.TemporaryDirectory() as workspace:
        config = load_config(ROOT / "configs" / "minilm_documents.yaml", [f"documents={DOCUMENTS}"])
        inputs = load_inputs(config, RunDirectory(workspace))
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, (cache_mb, precision) in VARIANTS.items():
                run = fresh_run(inputs, cache_mb, precision, Path(workspace))
                if name.startswith("cached"):
                    fill_cache(run, args.steps)
                samples[name] += timed_steps(run, args.steps)
    rows = {name: {"cpu_s": statistics.median(t[0] for t in times), "wall_s": statistics.median(t[1] for t in times),
                   "steps": len(times)} for name, times in samples.items()}
    base = rows["recomputed"]["cpu_s"]
    for row in rows.values():
        row["relative_to_recomputed"] = row["cpu_s"] / base
    result = {"environment": finished(environment), "length": inputs.length, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_time_cpu.json").write_text(json.dumps(result, indent=2))
    lines = ["| step | median step, CPU s | median step, wall s | vs recomputed |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['relative_to_recomputed']:.2f}x |" for name, r in rows.items()]
    (RESULTS / "step_time_cpu.md").write_text(
        "\n".join(lines) + f"\n\n`{environment['command']}` on {environment['machine']}, one thread; load average "
        f"{environment['load_before'][0]:.1f} -> {environment['load_after'][0]:.1f}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
