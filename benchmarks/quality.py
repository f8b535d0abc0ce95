"""Quality against the alternatives, at the same parameter count, data and step budget.

For each target (share of MiniLM's encoder parameters kept), on STS-B train (dev for choices):
  1. L0 pruning with distillation (this project),
  2. keeping evenly spaced / first layers, no training,
  3. the same layer drop followed by the same distillation,
  4. one-shot gradient importance of heads and neurons (Michel et al. 2019) + the same distillation,
  5. for reference, the unpruned model trained with the same data and budget.
Reported on STS-B test (Spearman) and SciFact test (nDCG@10), with parameters, retained fractions,
the measured encoding speedup and wall time. Writes benchmarks/results/quality.json and prints the
markdown table that benchmarks/RESULTS.md holds.

    python benchmarks/quality.py     # both targets, 300 steps per trained method, STS-B and SciFact
    python benchmarks/quality.py --name quality_passages \
        --set distill_dataset=../shared/data/msmarco/trec_dl2019_pairs_rel2plus.jsonl loss.task=0.1
        # every trained method also distils on MS MARCO passages, the task loss at a tenth
        # (results/quality_passages.json, runs in runs/quality_passages/)
    python benchmarks/quality.py --name quality_passages_t003 \
        --set distill_dataset=../shared/data/msmarco/trec_dl2019_pairs_rel2plus.jsonl loss.task=0.03
        # the same with the task loss at 0.03: the table RESULTS.md leads with
    python benchmarks/quality.py --name quality_tokens_width --methods l0 --set \
        distill_dataset=../shared/data/msmarco/trec_dl2019_pairs_rel2plus.jsonl loss.task=0.03 \
        loss.distill_tokens=1 "structures=[heads,ffn]"
        # L0 pruning heads and neurons only, with token distillation (add --steps 1000 for the longer budget)
    python benchmarks/quality.py --name quality_corpus --methods l0 layer_drop_distilled importance --set \
        distill_dataset=../shared/data/scifact/corpus.jsonl loss.task=0.03 loss.distill_tokens=1 \
        "structures=[heads,ffn]" max_length=256
        # distilling on the documents served (SciFact's abstracts, no labels): the current figures
    python benchmarks/quality.py --name quality_passages_t003 --table   # print a results file's table

A finished run already in the run directory is reused, not trained again, so an interrupted
benchmark goes on where it stopped.

The about-70%-removed target keeps exactly a third of the encoder: two of MiniLM's six layers, so
the layer-drop rows have the same parameter count as the others to the parameter.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prune_engine.config import load_config  # noqa: E402
from prune_engine.data import load_eval_data, load_training_data  # noqa: E402
from prune_engine.evaluate import evaluate  # noqa: E402
from prune_engine.importance import evenly_spaced, gradient_importance, layer_drop_masks, masks_for_budget  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.prune import prune_embedder  # noqa: E402
from prune_engine.sources import load_embedder  # noqa: E402
from prune_engine.targets import ParameterBudget  # noqa: E402
from prune_engine.trainer import PruningRun, make_batch  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "stsb_minilm_half.yaml"
METHODS = ("l0", "layer_drop", "layer_drop_distilled", "importance", "unpruned")
TRAINING: list[str] = []  # config overrides every trained method shares (--set)


def encoder_parameters(embedder) -> int:
    return sum(p.numel() for n, p in embedder.encoder.named_parameters() if not n.startswith("embeddings."))


def score(embedder, original, sts_test, scifact, wall_s: float) -> dict:
    texts = sts_test.sentences1[:512]
    timings = []
    for model in (original, embedder, original, embedder):  # interleaved, so load affects both alike
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        timings.append(time.perf_counter() - start)
    result = {
        "encoder_parameters": encoder_parameters(embedder),
        "total_parameters": sum(p.numel() for p in embedder.encoder.parameters()),
        "stsb_test_spearman": evaluate(embedder, sts_test)["spearman"],
        "measured_speedup": (timings[0] + timings[2]) / (timings[1] + timings[3]),
        "wall_s": wall_s,
    }
    if scifact is not None:
        embedder.max_length = 256
        result["scifact_ndcg_at_10"] = evaluate(embedder, scifact)["ndcg_at_10"]
        embedder.max_length = original.max_length
    return result


def row_order(name: str) -> tuple:
    """original, the unpruned reference, then per target (most kept first) methods 1-4."""
    if name == "original":
        return (0,)
    kept = int(name.rsplit("(keep", 1)[1].rstrip(")")) if "(keep" in name else 101
    return (1, -kept, name)


def markdown_table(rows: dict[str, dict]) -> str:
    base = rows["original"]
    lines = ["| method | encoder params | total params | STS-B test | retained | SciFact nDCG@10 | retained "
             "| measured speedup | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(rows, key=row_order):
        row = rows[name]
        scifact_cells = (f"{row['scifact_ndcg_at_10']:.2f} | {row['scifact_ndcg_at_10'] / base['scifact_ndcg_at_10']:.1%}"
                         if "scifact_ndcg_at_10" in row else "– | –")
        lines.append(f"| {name} | {row['encoder_parameters']:,} | {row['total_parameters']:,} | "
                     f"{row['stsb_test_spearman']:.2f} | {row['stsb_test_spearman'] / base['stsb_test_spearman']:.1%} | "
                     f"{scifact_cells} | {row['measured_speedup']:.2f}x | {row['wall_s']:.0f} s |")
    return "\n".join(lines)


def trained(name: str, out: Path, overrides: list[str]):
    run_dir = out / name
    status = run_dir / "status.json"
    if status.is_file() and json.loads(status.read_text())["state"] == "done":
        metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
        print(f"{name}: reusing the finished run in {run_dir}", flush=True)
        return load_embedder(str(run_dir / "export"), trust_remote_code=True), json.loads(metrics[-1])["elapsed_s"]
    start = time.perf_counter()
    config = load_config(BASE_CONFIG, [f"output_dir={run_dir}", "eval_splits=[]", *TRAINING, *overrides])
    result = PruningRun(config, show_progress=True).run()
    return load_embedder(str(result.export_dir), trust_remote_code=True), time.perf_counter() - start


def fixed(name: str, out: Path, masks: StructureMasks, steps: str):
    masks_file = out / f"{name}.masks.json"
    masks_file.write_text(json.dumps(masks.as_dict()))
    return trained(name, out, [f"max_duration={steps}", f"fixed_masks={masks_file}", "target_params=null"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 1 / 3], help="share of encoder parameters kept")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every trained method")
    parser.add_argument("--no-scifact", action="store_true", help="skip SciFact (5183 documents per model)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every trained method, e.g. distill_dataset=... loss.task=0.1")
    parser.add_argument("--name", default="quality", help="results/<name>.json and runs/<name>/")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="measure only these; rows already in results/<name>.json are kept")
    parser.add_argument("--table", action="store_true", help="print the table of results/<name>.json and stop")
    args = parser.parse_args()
    results_file = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    if args.table:
        print(markdown_table(json.loads(results_file.read_text())["rows"]))
        return
    TRAINING.extend(args.set)
    args.out = ROOT / "runs" / args.name
    args.out.mkdir(parents=True, exist_ok=True)
    steps = f"{args.steps}ba"

    original = load_embedder("minilm")
    config = original.config
    sts_test = load_eval_data("sts", "test")
    scifact = None if args.no_scifact else load_eval_data("mteb/scifact", "test")
    results_file.parent.mkdir(exist_ok=True)
    header = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "command": " ".join(["python", "benchmarks/quality.py", *sys.argv[1:]])}

    def saved_rows() -> dict[str, dict]:
        return json.loads(results_file.read_text())["rows"] if results_file.is_file() else {}

    def record(name: str, row: dict) -> None:
        """Each row is saved as soon as it is measured, so a long benchmark keeps what it finished;
        the file is re-read first, so invocations for other targets can run beside this one."""
        rows = {**saved_rows(), name: {**row, "command": header["command"]}}
        partial = results_file.with_suffix(".json.partial")
        partial.write_text(json.dumps({"machine": header["machine"], "rows": rows}, indent=2))
        partial.replace(results_file)
        print(f"{name}: {row}", flush=True)

    if "original" not in saved_rows():
        record("original", score(original, original, sts_test, scifact, 0.0))

    if "unpruned" in args.methods:
        everything = layer_drop_masks(config, list(range(config.num_hidden_layers)))
        model, wall = fixed("unpruned_trained", args.out, everything, steps)
        record("5. unpruned, same training", score(model, original, sts_test, scifact, wall))

    @functools.cache
    def importance() -> dict:
        """Head and neuron importance from 50 batches of 32 STS-B train pairs."""
        train = load_training_data("sts", "train")
        order = torch.randperm(len(train.sentences1), generator=torch.Generator().manual_seed(0)).tolist()
        return gradient_importance(original, [make_batch(train, order[i : i + 32]) for i in range(0, 32 * 50, 32)])

    for keep in args.keep:
        tag = f"keep{round(keep * 100)}"
        budget = ParameterBudget.from_fraction(config, keep).parameters
        n_layers = max(1, round(config.num_hidden_layers * keep))
        if "l0" in args.methods:
            model, wall = trained(f"l0_{tag}", args.out, [f"target_params.fraction={keep}", f"max_duration={steps}"])
            record(f"1. L0 + distillation ({tag})", score(model, original, sts_test, scifact, wall))
        if "layer_drop" in args.methods:
            for label, layers in (("evenly spaced", evenly_spaced(config.num_hidden_layers, n_layers)),
                                  ("first", list(range(n_layers)))):
                start = time.perf_counter()
                dropped = prune_embedder(original, layer_drop_masks(config, layers))
                record(f"2. {label} {n_layers} layers, no training ({tag})", score(
                    dropped, original, sts_test, scifact, time.perf_counter() - start))
        if "layer_drop_distilled" in args.methods:
            masks = layer_drop_masks(config, evenly_spaced(config.num_hidden_layers, n_layers))
            model, wall = fixed(f"layerdrop_{tag}", args.out, masks, steps)
            record(f"3. evenly spaced {n_layers} layers + distillation ({tag})",
                   score(model, original, sts_test, scifact, wall))
        if "importance" in args.methods:
            model, wall = fixed(f"importance_{tag}", args.out, masks_for_budget(config, importance(), budget), steps)
            record(f"4. gradient importance + distillation ({tag})", score(model, original, sts_test, scifact, wall))

    print(markdown_table(saved_rows()))

if __name__ == "__main__":
    main()
