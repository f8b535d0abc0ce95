"""Does label-free retention track labelled retention?

For each data set, a seeded share of its documents is held out and turned into pseudo-queries
(`prune_engine.label_free`: SciFact's titles; TREC DL passages have none, so inverse cloze
sentences), the rest of the corpus serving as distractors. Each model pruned from the bundled
MiniLM (evenly spaced or first layers kept, no training; `--model` adds others, e.g. run exports) is scored
against the original twice: on the real test queries with their relevance labels, and on the
pseudo-queries without any. If the label-free share retained tracks the labelled one, a user can
read it on their own documents. Writes benchmarks/results/<name>.json and .md.

    OMP_NUM_THREADS=1 python benchmarks/label_free.py     # SciFact, TREC DL 2019; 5..1 evenly spaced, first 3 layers
    python benchmarks/label_free.py --model runs/my-run/export --keep 3    # a trained export beside a layer drop
    python benchmarks/label_free.py --table                                # print the saved table

Each model encodes every distinct text of both tasks once (the pseudo-task's distractors are the
labelled corpus's own documents), the original once per data set. MiniLM reads 256 tokens, as
MTEB evaluates it (SciFact nDCG@10 64.51).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines import evenly_spaced, layer_drop_masks  # noqa: E402

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.data import RetrievalTask, load_eval_data, shared_data_dir  # noqa: E402
from prune_engine.documents import load_documents, split_documents  # noqa: E402
from prune_engine.embedder import Encoded  # noqa: E402
from prune_engine.evaluate import AGREEMENT, MIXED_PREFIX, encode, retrieval_figures  # noqa: E402
from prune_engine.label_free import AGREEMENT_AT_10, label_free_rows, pseudo_query_task  # noqa: E402
from prune_engine.prune import prune_embedder  # noqa: E402
from prune_engine.sources import load_embedder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"scifact": "scifact", "trec-dl-2019": "msmarco/trec-dl-2019-beir"}
NDCG, RECALL = "ndcg_at_10", "recall_at_100"


def encode_tasks(model, tasks: list[RetrievalTask], batch_size: int, label: str) -> list[dict[str, Encoded]]:
    """Each task's queries and documents as evaluate.encode_data gives them, every distinct text encoded once."""
    texts = list(dict.fromkeys(t for task in tasks for part in (task.queries, task.corpus) for t in part.values()))
    dense = encode(model, texts, batch_size, show_progress=True, description=label, all_outputs=False).dense
    row = {text: index for index, text in enumerate(texts)}  # (n_distinct, hidden) rows by text

    def part(values) -> Encoded:
        return Encoded(dense[[row[text] for text in values]])

    return [{"queries": part(task.queries.values()), "documents": part(task.corpus.values())} for task in tasks]


def models_to_compare(original, keep: list[int], first: list[int], paths: list[str], max_length: int) -> dict:
    """The original first, then its evenly spaced and first layers kept (no training), then `paths`."""
    n_layers = original.config.num_hidden_layers
    layer_sets = {f"{k} of {n_layers} layers evenly spaced": evenly_spaced(n_layers, k) for k in keep}
    layer_sets |= {f"first {k} of {n_layers} layers": list(range(k)) for k in first}
    models = {f"original ({n_layers} layers)": original}
    for label, layers in layer_sets.items():
        models[label] = prune_embedder(original, layer_drop_masks(original.config, layers)).eval()
    for path in paths:
        models[path] = load_embedder(path, max_length=max_length).eval()
    return models


def comparison_row(labelled: RetrievalTask, before: dict, after: dict, free_rows: dict) -> dict:
    """One model on one data set: labelled figures and retention beside the label-free ones."""
    own_before = retrieval_figures(labelled, before["queries"], before["documents"])
    own_after = retrieval_figures(labelled, after["queries"], after["documents"])
    mixed = retrieval_figures(labelled, after["queries"], before["documents"])
    return {
        "labelled_ndcg_original": own_before[NDCG],
        "labelled_ndcg_pruned": own_after[NDCG],
        "labelled_ndcg_retained": own_after[NDCG] / own_before[NDCG],
        "labelled_recall_retained": own_after[RECALL] / own_before[RECALL],
        "labelled_index_compat_retained": mixed[NDCG] / own_before[NDCG],
        "free_ndcg_original": free_rows[NDCG]["original"],
        "free_ndcg_pruned": free_rows[NDCG]["pruned"],
        "free_ndcg_retained": free_rows[NDCG]["retained"],
        "free_recall_retained": free_rows[RECALL]["retained"],
        "agreement_at_10": free_rows[AGREEMENT_AT_10]["pruned"],
        "mean_cosine": free_rows[AGREEMENT]["pruned"],
        "free_index_compat_retained": free_rows[MIXED_PREFIX + NDCG]["retained"],
    }


def dataset_rows(name: str, models: dict, args) -> tuple[str, list[dict]]:
    folder = shared_data_dir() / DATASETS[name]
    labelled = load_eval_data(str(folder), "test")
    split = split_documents(load_documents(str(folder / "corpus.jsonl")), args.fraction)  # the product's held-out slice
    free = pseudo_query_task(split.held_out.documents, split.training.texts(), args.seed, args.max_distractors,
                             source=f"{name} corpus")
    print(f"{name}: labelled {len(labelled.qrels)} queries / {len(labelled.corpus)} documents; {free.source}", file=sys.stderr)
    rows, original = [], None
    for label, model in models.items():
        start = time.perf_counter()
        encoded = encode_tasks(model, [labelled, free], args.batch_size, f"{name}: {label}")
        if original is None:  # the first model is the original
            original = encoded
        row = comparison_row(labelled, original[0], encoded[0], label_free_rows(free, original[1], encoded[1]))
        rows.append({"dataset": name, "model": label, **row, "encode_s": round(time.perf_counter() - start, 1)})
        print(f"  {label}: labelled {row['labelled_ndcg_retained']:.1%}, label-free {row['free_ndcg_retained']:.1%}",
              file=sys.stderr)
    return free.source, rows


def agreement(rows: list[dict]) -> dict:
    """How well label-free nDCG@10 retention tracks the labelled one over the pruned models (the
    original, 100% on both by construction, left out)."""
    pruned = [row for row in rows if not row["model"].startswith("original")]
    labelled = np.array([row["labelled_ndcg_retained"] for row in pruned])
    result = {"models": len(pruned), "max_abs_difference_points": float(100 * np.max(np.abs(
        np.array([row["free_ndcg_retained"] for row in pruned]) - labelled)))}
    for figure in ("free_ndcg_retained", "free_recall_retained", "agreement_at_10", "mean_cosine", "free_index_compat_retained"):
        values = np.array([row[figure] for row in pruned])
        if len(pruned) > 2 and np.ptp(values) > 0:  # a constant figure (R@100 at 100% everywhere) has no correlation
            result[figure] = {"pearson": float(pearsonr(values, labelled).statistic),
                              "spearman": float(spearmanr(values, labelled).statistic)}
    return result


def markdown(result: dict) -> str:
    lines = ["| data set | model | labelled nDCG@10 | retained | label-free nDCG@10 | retained | label-free R@100 "
             "retained | agreement@10 | mean cosine | index compat. retained (label-free / labelled) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['labelled_ndcg_pruned']:.2f} | {r['labelled_ndcg_retained']:.1%} "
                     f"| {r['free_ndcg_pruned']:.2f} | {r['free_ndcg_retained']:.1%} | {r['free_recall_retained']:.1%} "
                     f"| {r['agreement_at_10']:.3f} | {r['mean_cosine']:.3f} "
                     f"| {r['free_index_compat_retained']:.1%} / {r['labelled_index_compat_retained']:.1%} |")
    lines += ["", "Against labelled nDCG@10 retention, over the pruned models (the original left out):", "",
              "| over | models | max abs difference (points) | " + " | ".join(
                  f"{name} Pearson / Spearman" for name in ("label-free nDCG@10 retained", "label-free R@100 retained",
                                                           "agreement@10", "mean cosine", "index compat. retained")) + " |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for over, stats in result["agreement"].items():
        cells = [f"{stats[f]['pearson']:.3f} / {stats[f]['spearman']:.3f}" if f in stats else "n/a" for f in
                 ("free_ndcg_retained", "free_recall_retained", "agreement_at_10", "mean_cosine", "free_index_compat_retained")]
        lines.append(f"| {over} | {stats['models']} | {stats['max_abs_difference_points']:.1f} | " + " | ".join(cells) + " |")
    environment = result["environment"]
    lines += ["", "n/a: fewer than three models, or the figure is the same for every model.", "",
              f"`{environment['command']}` on {environment['machine']}, {environment['threads']} thread(s), torch "
              f"{environment['torch']}, {environment['wall_s']} s, "
              f"load average {environment['load_before'][0]} before, {environment['load_after'][0]} after."]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--keep", nargs="*", type=int, default=[5, 4, 3, 2, 1], help="evenly spaced layers kept of MiniLM's 6")
    parser.add_argument("--first", nargs="*", type=int, default=[3], help="first layers kept of MiniLM's 6")
    parser.add_argument("--model", nargs="*", default=[], metavar="PATH", help="more models pruned from MiniLM")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of each corpus held out")
    parser.add_argument("--max-distractors", dest="max_distractors", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", dest="max_length", type=int, default=256)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--name", default="label_free", help="results file name under benchmarks/results/")
    parser.add_argument("--table", action="store_true", help="print the saved results' table and stop")
    args = parser.parse_args()
    path = RESULTS / f"{args.name}.json"
    if args.table:
        print(markdown(json.loads(path.read_text())))
        return
    if any(not 1 <= k <= 6 for k in args.keep + args.first):
        parser.error("--keep and --first take layer counts from 1 to 6")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    environment = {**describe(), "settings": {k: v for k, v in vars(args).items() if k != "table"}}
    start = time.perf_counter()
    original = load_embedder("minilm", max_length=args.max_length).eval()
    models = models_to_compare(original, args.keep, args.first, args.model, args.max_length)
    sources, rows = {}, []
    for name in args.datasets:
        sources[name], more = dataset_rows(name, models, args)
        rows += more
    stats = {name: agreement([r for r in rows if r["dataset"] == name]) for name in args.datasets}
    stats["all"] = agreement(rows)
    environment = {**finished(environment), "wall_s": round(time.perf_counter() - start)}
    result = {"environment": environment, "label_free_tasks": sources, "rows": rows, "agreement": stats}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(result, indent=2))
    write_atomically(path.with_suffix(".md"), markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
