"""Quality against the simpler alternatives, on the default documents recipe, at several sizes.

Every trained row is the product's default recipe (configs/minilm_documents.yaml: distil on the
documents served, STS-B train pairs as optional task data at weight 0.03, token distillation),
on the bundled MiniLM, with the same data, steps and evaluation; only the way the structure is
chosen differs:
  l0                    L0 masks learned with distillation (this project), heads and neurons;
  layer_drop            evenly spaced whole layers, no training (a floor);
  layer_drop_distilled  the same layers, then the same distillation;
  importance            heads and neurons by one-shot gradient importance (Michel et al. 2019),
                        then the same distillation;
  unpruned              the whole model so trained (a ceiling; the target does not apply).
Targets are shares of the encoder kept (--keep); every trained row runs with each --seeds.
Documents (--documents): SciFact's abstracts or TREC DL 2019's passages, no labels; a model
distilled on one is scored on both, so the other column shows a corpus it was not tuned on.
Scores: STS-B test Spearman, SciFact test and TREC DL 2019 nDCG@10 (and pruned queries against
the original's document vectors), the run's own label-free retention on its held-out documents,
and the measured speedup.

    python benchmarks/quality.py --jobs 2         # the whole table, two rows side by side
    python benchmarks/quality.py --pending        # the rows still to run
    python benchmarks/quality.py --documents scifact --keep 0.5 --methods l0 --seeds 42 1
    python benchmarks/quality.py --table          # the table RESULTS.md leads with
    python benchmarks/quality.py --plot           # results/quality_documents_curve.png
    python benchmarks/quality.py --speedups       # after rows trained on a GPU: their speedups, on this CPU

The whole table (no --keep): both corpora, every method at half and a third of the encoder, L0
also at 0.75 and 0.2, two seeds per trained row. Steps: 1,000 at half the encoder and for the
unpruned row, 600 otherwise (--steps overrides). Finished runs in runs/<name>/ are reused and
rows are saved as soon as measured, so invocations can run side by side (one thread each) and an
interrupted table goes on where it stopped: CPU time is spread over as many sittings as it takes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import evenly_spaced, layer_drop_masks, masks_for_budget  # noqa: E402
from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.atomic import write_text_atomic  # noqa: E402
from prune_engine.batches import make_batch  # noqa: E402
from prune_engine.config import config_yaml, load_config  # noqa: E402
from prune_engine.data import load_eval_data, load_training_data, shared_data_dir  # noqa: E402
from prune_engine.encoding_cache import EncodingCache  # noqa: E402
from prune_engine.evaluate import compare  # noqa: E402
from prune_engine.importance import IMPORTANCE_BATCHES, gradient_importance  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.latency import machine_description  # noqa: E402
from prune_engine.prune import prune_embedder  # noqa: E402
from prune_engine.sources import load_embedder, resolve_model_dir  # noqa: E402
from prune_engine.targets import ParameterBudget  # noqa: E402
from prune_engine.trainer import PruningRun  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "minilm_documents.yaml"
# Inside the shared data folder ($PRUNE_ENGINE_DATA, else ../shared/data).
DOCUMENTS = {"scifact": "scifact/corpus.jsonl", "trec": "msmarco/trec-dl-2019-beir/corpus.jsonl"}
RETRIEVAL = {"scifact": "mteb/scifact", "trec": "msmarco/trec-dl-2019-beir"}
# Rows train and score on the GPU where there is one; speedups are measured on CPUs only (the
# product's serving figure), so a GPU machine leaves them to `--speedups` on the CPU machine.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
METHODS = ("l0", "layer_drop", "layer_drop_distilled", "importance", "unpruned")
RESULTS = ROOT / "benchmarks" / "results"
MIXED = "pruned_queries_original_index/ndcg_at_10"


def encoder_parameters(embedder) -> int:
    return sum(p.numel() for n, p in embedder.encoder.named_parameters() if not n.startswith("embeddings."))


def measured_speedup(original, pruned, texts: list[str]) -> float:
    timings = {"original": 0.0, "pruned": 0.0}
    for name, model in [("original", original), ("pruned", pruned)] * 2:  # interleaved: load hits both alike
        start = time.perf_counter()
        model.encode(texts, batch_size=32)
        timings[name] += time.perf_counter() - start
    return timings["original"] / timings["pruned"]


class Scorer:
    """Scores a model against the original; the original's encodings come from the disk cache."""

    def __init__(self):
        self.original = load_embedder("minilm").to(DEVICE)
        self.cache = EncodingCache(resolve_model_dir("minilm"), self.original)
        self.sts_texts = load_eval_data("sts", "test").sentences1[:512]

    def speedup(self, model) -> dict:
        """The measured speedup and the processor it was measured on; nothing on a GPU machine."""
        if DEVICE.type != "cpu":
            return {}
        return {"measured_speedup": measured_speedup(self.original, model, self.sts_texts),
                "speedup_machine": machine_description(DEVICE)}

    def __call__(self, model, run_dir: Path | None, wall_s: float) -> dict:
        model = model.to(DEVICE)
        row = {"encoder_parameters": encoder_parameters(model), "wall_s": wall_s,
               "machine": machine_description(DEVICE), "torch": torch.__version__, **self.speedup(model)}
        if DEVICE.type == "cuda":
            row["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        sts = compare(self.original, model, "sts", ("test",), original_cache=self.cache)["splits"]["test"]["metrics"]
        row["stsb"] = sts["spearman"]["pruned"]
        for name, dataset in RETRIEVAL.items():
            dataset = dataset if dataset.startswith("mteb/") else str(shared_data_dir() / dataset)
            figures = compare(self.original, model, dataset, ("test",), original_cache=self.cache)["splits"]["test"]["metrics"]
            row[name] = figures["ndcg_at_10"]["pruned"]
            row[f"{name}_index"] = figures[MIXED]["pruned"]
        report = json.loads((run_dir / "report.json").read_text()) if run_dir and (run_dir / "report.json").is_file() else {}
        held_out = report.get("documents", {}).get("splits", {}).get("held_out", {}).get("metrics", {})
        if held_out:
            row["label_free_retained"] = held_out["ndcg_at_10"]["retained"]
            row["label_free_agreement"] = held_out["top10_agreement"]["pruned"]
        return row

    def reference(self) -> dict:
        row = self(self.original, None, 0.0)
        row["measured_speedup"] = 1.0
        return row

    def remeasure_speedup(self, key: str, row: dict) -> dict:
        """A row's speedup measured on this CPU from its structure alone (the final masks of its
        run, or the evenly spaced layers of an untrained layer drop): speed does not depend on the
        weights, so rows trained elsewhere need not travel with their models."""
        if row.get("run_dir"):
            masks = StructureMasks.from_dict(json.loads((ROOT / row["run_dir"] / "final_masks.json").read_text()))
        else:  # "<documents>/layer_drop/keep<percent>"
            masks = evenly_spaced_masks(self.original.config, int(key.rsplit("/keep", 1)[1]) / 100)
        return {**row, **self.speedup(prune_embedder(self.original, masks))}


def recipe_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose value in a finished run's config.yaml differs from the recipe's now (keys a run
    predates are not compared: the values they had then are not on record)."""
    changes = []
    for key in saved.keys() & current.keys():
        if isinstance(saved[key], dict) and isinstance(current[key], dict):
            changes += recipe_changes(saved[key], current[key], f"{prefix}{key}.")
        elif saved[key] != current[key]:
            changes.append(f"{prefix}{key}: {saved[key]!r} then, {current[key]!r} now")
    return changes


def train(run_dir: Path, overrides: list[str]) -> tuple[object, float]:
    """Trains (or reuses the finished run in) `run_dir`; returns its export and the seconds its steps
    took over every sitting (the run's own elapsed_s, so a resumed row is not timed from its last sitting)."""
    config = load_config(BASE_CONFIG, [f"output_dir={run_dir}", "eval_splits=[]", *overrides])
    status = run_dir / "status.json"
    if status.is_file() and json.loads(status.read_text())["state"] == "done":
        changes = recipe_changes(yaml.safe_load((run_dir / "config.yaml").read_text()), yaml.safe_load(config_yaml(config)))
        if changes:
            sys.exit(f"{run_dir} was trained with another recipe ({'; '.join(changes)}): move it and its row in "
                     "results/ aside to train the row again")
        print(f"{run_dir.name}: reusing the finished run", flush=True)
    else:
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        PruningRun(config, show_progress=True).run(resume=resume)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return load_embedder(str(run_dir / "export"), trust_remote_code=True), last["elapsed_s"]


def importance_masks(original, budget: int):
    """Head and neuron importance from IMPORTANCE_BATCHES batches of 32 STS-B train pairs (the recipe's task data)."""
    pairs = load_training_data("sts", "train")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [make_batch(pairs, order[i : i + 32]) for i in range(0, 32 * IMPORTANCE_BATCHES, 32)]
    return masks_for_budget(original.config, gradient_importance(original, batches), budget)


def evenly_spaced_masks(config, keep: float):
    """Evenly spaced whole layers, `keep` of them (at least one): the layer-drop rows' structure."""
    return layer_drop_masks(config, evenly_spaced(config.num_hidden_layers, max(1, round(config.num_hidden_layers * keep))))


def structure_overrides(method: str, keep: float, masks_dir: Path, original) -> list[str] | None:
    """The config overrides that make a method's structure (None: the method is not trained)."""
    config = original.config
    if method == "l0":
        return [f"target_params.fraction={keep}"]
    if method == "unpruned":
        masks = layer_drop_masks(config, list(range(config.num_hidden_layers)))
    elif method == "layer_drop_distilled":
        masks = evenly_spaced_masks(config, keep)
    elif method == "importance":
        masks = importance_masks(original, ParameterBudget.from_fraction(config, keep).parameters)
    else:
        return None
    path = masks_dir / f"{method}_keep{round(keep * 100)}.masks.json"
    write_text_atomic(path, json.dumps(masks.as_dict()))  # rows side by side may write it at once
    return [f"fixed_masks={path}", "target_params=null"]


def row_key(documents: str, method: str, keep: float, seed: int | None) -> str:
    keep_text = "all" if method == "unpruned" else f"keep{round(keep * 100)}"
    return f"{documents}/{method}/{keep_text}" + (f"/seed{seed}" if seed is not None else "")


def load_rows(results: Path) -> dict:
    return json.loads(results.read_text())["rows"] if results.is_file() else {}


def save_row(results: Path, key: str, row: dict, environment: dict) -> None:
    """Re-reads the file under a lock first, so invocations for other rows can run beside this one."""
    folder = os.open(results.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        rows = {**load_rows(results), key: row}
        partial = results.with_name(f".{results.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
        partial.replace(results)
    finally:
        os.close(folder)  # releases the lock
    print(f"{key}: {row}", flush=True)


FIGURES = (("stsb", "STS-B"), ("scifact", "SciFact"), ("scifact_index", "SciFact, old index"),
           ("trec", "TREC DL"), ("trec_index", "TREC DL, old index"), ("label_free_retained", "label-free kept"))


def summary(rows: dict) -> dict[str, dict]:
    """(documents/method/target) -> per figure: the seeds' mean and spread (max - min)."""
    groups: dict[str, list[dict]] = {}
    for key, row in rows.items():
        groups.setdefault(key.rsplit("/seed", 1)[0], []).append(row)
    out = {}
    for group, members in groups.items():
        out[group] = {"seeds": len(members), "encoder_parameters": members[0]["encoder_parameters"],
                      "machines": sorted({m.get("machine", "?") for m in members})}
        for figure, _ in (*FIGURES, ("measured_speedup", "")):
            values = [m[figure] for m in members if figure in m]
            if values:
                out[group][figure] = (statistics.mean(values), max(values) - min(values))
    return out


def markdown_table(rows: dict) -> str:
    groups = summary(rows)
    original = groups.get("original", {})
    header = ["rows", "encoder params", "seeds", *(label for _, label in FIGURES), "speedup", "machine"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for group in sorted(groups, key=lambda g: (g != "original", g.split("/")[0], -groups[g]["encoder_parameters"], g)):
        cells = [group, f"{groups[group]['encoder_parameters']:,}", str(groups[group]["seeds"])]
        for figure, _ in FIGURES:
            if figure not in groups[group]:
                cells.append("–")
                continue
            mean, spread = groups[group][figure]
            base = original.get(figure, (None,))[0]
            kept = f" ({mean / base:.1%})" if base and figure != "label_free_retained" else ""
            value = f"{mean:.1%}" if figure == "label_free_retained" else f"{mean:.2f}"
            cells.append(value + (f" ±{spread / 2:.2f}" if groups[group]["seeds"] > 1 and figure != "label_free_retained" else "") + kept)
        speedup = groups[group].get("measured_speedup")
        cells.append(f"{speedup[0]:.2f}x" if speedup else "–")
        cells.append(", ".join(groups[group]["machines"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# One colour per method across every panel, so a line reads the same wherever it appears.
PLOT_STYLE = {
    "l0": ("L0 masks (this tool)", "tab:blue"),
    "layer_drop_distilled": ("evenly spaced layers + distillation", "tab:orange"),
    "importance": ("gradient importance + distillation", "tab:green"),
    "layer_drop": ("evenly spaced layers, no training", "tab:grey"),
    "unpruned": ("unpruned, so trained", "tab:purple"),
}


def plot(rows: dict, path: Path):
    """Retained share of the original against the share of the encoder kept, one line per method,
    the seeds' range as error bars; one panel per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary(rows)
    original = groups["original"]
    full = original["encoder_parameters"]
    figures = [("stsb", "STS-B test"), ("scifact", "SciFact nDCG@10"), ("trec", "TREC DL 2019 nDCG@10")]
    documents = sorted({g.split("/")[0] for g in groups if g != "original"})
    fig, axes = plt.subplots(len(documents), 3, figsize=(14, 4.2 * len(documents)), squeeze=False)
    for row_axes, docs in zip(axes, documents, strict=True):
        for axis, (figure, title) in zip(row_axes, figures, strict=True):
            for method, (label, colour) in PLOT_STYLE.items():
                points = sorted((g["encoder_parameters"] / full, *g[figure]) for name, g in groups.items()
                                if name.startswith(f"{docs}/{method}/") and figure in g)
                if points:
                    x, mean, spread = zip(*points, strict=True)
                    axis.errorbar(x, [100 * m / original[figure][0] for m in mean],
                                  yerr=[50 * s / original[figure][0] for s in spread], marker="o", capsize=3,
                                  label=label, color=colour)
            axis.axhline(100, color="grey", linewidth=0.8, linestyle="--")
            axis.set(title=f"{title} (documents: {docs})", xlabel="share of the encoder kept", ylabel="% of the original")
            axis.grid(alpha=0.3)
    handles = {}  # one legend for the figure, below the panels, where it hides no curve
    for axis in axes.flat:
        handles.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.05 / len(documents), 1, 1))
    fig.savefig(path, dpi=110)
    return fig


TABLE_KEEPS = (0.5, 1 / 3)  # every method
CURVE_KEEPS = (0.75, 0.2)  # L0 alone, to draw its curve


def planned_rows(documents: list[str], methods: list[str], keeps: list[float] | None,
                 seeds: list[int]) -> list[tuple[str, str, float, int | None]]:
    """(documents, method, keep, seed) of every row asked for, in the order they run. No keeps
    given: the whole table, every method at TABLE_KEEPS and L0 also at CURVE_KEEPS."""
    rows = []
    for docs in documents:
        if "unpruned" in methods:  # its size is the original's: one row per seed, whatever the targets
            rows += [(docs, "unpruned", 1.0, seed) for seed in seeds]
        for keep in keeps or (*TABLE_KEEPS, *CURVE_KEEPS):
            for method in methods:
                if method == "unpruned" or (keeps is None and keep in CURVE_KEEPS and method != "l0"):
                    continue
                rows += [(docs, method, keep, None)] if method == "layer_drop" else [(docs, method, keep, seed) for seed in seeds]
    return rows


def run_row(scorer: Scorer, runs: Path, results: Path, environment: dict, row_spec: tuple, steps: int | None,
            overrides_for_all: list[str]) -> None:
    documents, method, keep, seed = row_spec
    overrides = structure_overrides(method, keep, runs, scorer.original)
    steps = steps or (1000 if method == "unpruned" or abs(keep - 0.5) < 1e-9 else 600)
    key = row_key(documents, method, keep, seed)
    if overrides is None:  # untrained layer drop
        model = prune_embedder(scorer.original, evenly_spaced_masks(scorer.original.config, keep))
        row, run_dir = scorer(model, None, 0.0), None
    else:
        run_dir = runs / key.replace("/", "_")
        model, wall = train(run_dir, [f"documents={shared_data_dir() / DOCUMENTS[documents]}", f"seed={seed}",
                                      f"max_duration={steps}ba", *overrides, *overrides_for_all])
        row = scorer(model, run_dir, wall)
    save_row(results, key, {**row, "steps": steps if run_dir else 0, "command": environment["command"],
                            "run_dir": str(run_dir.relative_to(ROOT)) if run_dir else None}, finished(environment))


def run_side_by_side(pending: list[tuple], args: argparse.Namespace) -> list[str]:
    """Each row in a process of its own, `--jobs` at a time with one thread each (two threads on
    two busy cores make every step several times slower); returns the rows that failed."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting, running, failed = list(pending), {}, []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            documents, method, keep, seed = spec = waiting.pop(0)
            command = [sys.executable, __file__, "--name", args.name, "--documents", documents, "--methods", method,
                       "--keep", repr(keep), *(["--seeds", str(seed)] if seed is not None else []),
                       *(["--steps", str(args.steps)] if args.steps else []), *(["--set", *args.set] if args.set else [])]
            running[subprocess.Popen(command, env=environment)] = row_key(*spec)
        time.sleep(5)
        for process in [p for p in running if p.poll() is not None]:
            if process.returncode:
                failed.append(running[process])
            del running[process]
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", nargs="+", choices=sorted(DOCUMENTS), default=sorted(DOCUMENTS))
    parser.add_argument("--keep", type=float, nargs="+", help="shares of the encoder kept (default: the whole table)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--steps", type=int, help="steps of every trained row (default: 1000 at half and unpruned, else 600)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every trained row")
    parser.add_argument("--name", default="quality_documents", help="results/<name>.json and runs/<name>/")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained side by side, one process and one thread each")
    parser.add_argument("--pending", action="store_true", help="list the rows still to run and stop")
    parser.add_argument("--table", action="store_true", help="print the table of results/<name>.json and stop")
    parser.add_argument("--plot", action="store_true", help="draw results/<name>_curve.png and stop")
    parser.add_argument("--speedups", action="store_true",
                        help="measure on this CPU the speedups of rows scored on a GPU machine, and stop")
    args = parser.parse_args()
    results = RESULTS / f"{args.name}.json"
    if args.table or args.plot:
        if args.plot:
            plot(load_rows(results), RESULTS / f"{args.name}_curve.png")
        print(markdown_table(load_rows(results)))
        return
    if args.speedups:
        scorer, environment = Scorer(), describe()
        for key, row in load_rows(results).items():
            if "measured_speedup" not in row:
                save_row(results, key, scorer.remeasure_speedup(key, row), finished(environment))
        print(markdown_table(load_rows(results)))
        return
    done = load_rows(results)
    pending = [spec for spec in planned_rows(args.documents, args.methods, args.keep, args.seeds) if row_key(*spec) not in done]
    if args.pending:
        print("\n".join(row_key(*spec) for spec in pending) or "nothing left to run")
        return
    runs = ROOT / "runs" / args.name
    runs.mkdir(parents=True, exist_ok=True)
    environment = describe(DEVICE)
    if "original" not in done or args.jobs == 1:
        scorer = Scorer()
        if "original" not in done:
            save_row(results, "original", scorer.reference(), finished(environment))
    if args.jobs > 1:
        failed = run_side_by_side(pending, args)
        if failed:
            sys.exit(f"rows that failed (their logs are above; rerun to retry them): {', '.join(failed)}")
    else:
        for spec in pending:
            if row_key(*spec) not in load_rows(results):  # another invocation may have measured it meanwhile
                run_row(scorer, runs, results, environment, spec, args.steps, args.set)
    print(markdown_table(load_rows(results)))


if __name__ == "__main__":
    main()
