"""BGE-M3's whole user path at its real shape on a CPU: `python -m prune_engine prune
configs/bge_m3.yaml` against the stand-in `bge_m3_standin.py` writes (random weights, the real
shape, files and tokenizer), with small batch, length and step overrides, through mask steps,
final masks, fine-tuning steps, vocabulary trimming to the recipe's five languages, export and
evaluation. Then the export is loaded as a user would (SentenceTransformer; AutoModel with
`sparse_linear.pt` / `colbert_linear.pt`, remote code only where the structure needs it) and its
three outputs are checked against the masked model's on STS-B test text in five languages.

    python benchmarks/bge_m3_standin.py --cache /work/bge-m3-standin-cache
    HF_HUB_CACHE=/work/bge-m3-standin-cache HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/bge_m3_path.py --work-dir /tmp/bge-m3-path

Stage times are the run's own (report.json `timings_s`: load, teacher, steps, slicing, export,
evaluation); step times come from metrics.jsonl (logged every step); the peak resident memory is
the CLI process's (wait4's ru_maxrss). The masked model is the source model with the export's
weights put back where the final masks kept them and its gates set to the masks, read with the
source's own tokenizer: the export must give the same dense vectors, the same lexical weights
keyed by the source's token ids (through `original_token_ids.json`) and the same multi-vectors.
Writes benchmarks/results/bge_m3_path_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.export import ORIGINAL_IDS_FILE  # noqa: E402
from prune_engine.l0 import StructureMasks  # noqa: E402
from prune_engine.prune import _HEAD_COLUMNS, _HEAD_ROWS, _NEURON_COLUMNS, _NEURON_ROWS  # noqa: E402
from prune_engine.sources import BGE_M3_HEAD_FILES, BGE_M3_HUB_ID, load_embedder  # noqa: E402

LANGUAGES = ("en", "de", "fr", "zh", "ru")
DATA_DIR = Path(os.environ.get("PRUNE_ENGINE_DATA", ROOT.parent / "shared" / "data"))
CONFIG = ROOT / "configs" / "bge_m3.yaml"
# What this 2-core box takes at BGE-M3's size: 2 mask steps, 2 fine-tuning steps of 4 + 4 texts of
# 64 tokens, the label-free evaluation on 20 held-out documents among 100 distractors.
OVERRIDES = ("batch_size=4", "documents_per_batch=4", "max_length=64", "max_duration=4ba", "log_every=1",
             "eval_splits=[]", "documents_held_out=0.0001", "documents_distractors=100")
TOLERANCE = 1e-4


def run_cli(run_dir: Path, overrides: tuple[str, ...] = OVERRIDES, env: dict | None = None) -> dict:
    """Runs the prune command; its wall time and peak RSS (its own, from wait4), its output in run_dir.parent."""
    command = [sys.executable, "-m", "prune_engine", "prune", str(CONFIG), "--output-dir", str(run_dir), *overrides]
    log = run_dir.parent / f"{run_dir.name}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
    return {"command": " ".join(["python", "-m", "prune_engine", "prune", "configs/bge_m3.yaml", *overrides]),
            "wall_s": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}


def run_figures(run_dir: Path) -> dict:
    """Stage times from report.json, per-step times from metrics.jsonl, the export's size."""
    report = json.loads((run_dir / "report.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = [0.0] + [r["elapsed_s"] for r in records]
    steps = [{"step": r["step"], "phase": r["phase"], "seconds": round(b - a, 2)}
             for r, a, b in zip(records, elapsed[:-1], elapsed[1:], strict=True)]
    info = json.loads((run_dir / "export" / "pruning_info.json").read_text())
    return {"timings_s": {k: round(v, 2) for k, v in report["timings_s"].items()}, "steps": steps,
            "structure": info["structure_description"], "parameters_before": info["parameters_before"],
            "parameters_after": info["parameters_after"], "vocabulary": info["vocabulary"],
            "needs_trust_remote_code": info["needs_trust_remote_code"], "documents": report.get("documents")}


def _put_back(target: torch.Tensor, value: torch.Tensor, module: str, kind: str, heads, neurons) -> None:
    """The inverse of prune._slice_layer for one tensor: the kept rows / columns take the export's values."""
    for rows, columns, index in ((_HEAD_ROWS, _HEAD_COLUMNS, heads), (_NEURON_ROWS, _NEURON_COLUMNS, neurons)):
        if module in rows:
            target.index_copy_(0, index, value)
            return
        if module in columns and kind == "weight":
            target.index_copy_(1, index, value)
            return
    target.copy_(value)


@torch.no_grad()
def masked_model(source: str, run_dir: Path):
    """The source model holding the export's weights where the final masks kept them, and those masks
    as gates. The export's word embeddings must be the source's rows at the original ids (the recipe
    freezes them); its other weights replace the source's."""
    model = load_embedder(source)
    exported = load_embedder(str(run_dir / "export"))
    masks = StructureMasks.from_dict(json.loads((run_dir / "final_masks.json").read_text()))
    original_ids = torch.tensor(json.loads((run_dir / "export" / ORIGINAL_IDS_FILE).read_text()))
    target, head_size = model.encoder.state_dict(), model.config.attention_head_size
    words = "embeddings.word_embeddings.weight"
    if not torch.equal(target[words][original_ids], exported.encoder.state_dict()[words]):
        raise AssertionError("the export's word embeddings are not the source's rows at original_token_ids.json")
    kept_layers = torch.nonzero(masks.layers).flatten().tolist()
    for key, value in exported.encoder.state_dict().items():
        if key == words:
            continue
        if not key.startswith("encoder.layer."):
            target[key].copy_(value)
            continue
        new, name = key.removeprefix("encoder.layer.").split(".", 1)
        old = kept_layers[int(new)]
        heads = (torch.nonzero(masks.heads[old]).flatten()[:, None] * head_size + torch.arange(head_size)).flatten()
        module, _, kind = name.rpartition(".")
        _put_back(target[f"encoder.layer.{old}.{name}"], value, module, kind, heads, torch.nonzero(masks.ffn[old]).flatten())
    for head in BGE_M3_HEAD_FILES:
        getattr(model, head).load_state_dict(getattr(exported, head).state_dict())
    return model.eval(), masks.as_gates()


def covered_test_sentences(export_tokenizer, source_tokenizer, original_ids: np.ndarray, language: str,
                           count: int) -> tuple[list[str], int]:
    """The first `count` STS-B test sentences of `language` the trimmed vocabulary spells as the source
    does (the run's vocabulary never saw the test split), and how many were read to find them."""
    path = DATA_DIR / "stsb" / f"stsb-{language}-test.tsv"
    with path.open(encoding="utf-8", newline="") as handle:
        sentences = [row["sentence1"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    chosen = []
    for read, sentence in enumerate(sentences, 1):
        trimmed, source = export_tokenizer(sentence)["input_ids"], source_tokenizer(sentence)["input_ids"]
        if original_ids[trimmed].tolist() == source:
            chosen.append(sentence)
            if len(chosen) == count:
                return chosen, read
    raise AssertionError(f"only {len(chosen)} {language} test sentences are covered by the trimmed vocabulary")


def lexical_weights(ids: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, special: set[int]) -> list[dict]:
    """FlagEmbedding's lexical weights per text: the largest weight of each non-special token id."""
    result = []
    for row_ids, row_weights, row_mask in zip(ids.tolist(), weights.tolist(), mask.tolist(), strict=True):
        out: dict[int, float] = {}
        for token, weight, real in zip(row_ids, row_weights, row_mask, strict=True):
            if real and token not in special and weight > 0:
                out[token] = max(weight, out.get(token, 0.0))
        result.append(out)
    return result


@torch.no_grad()
def masked_outputs(model, gates, texts: list[str]) -> dict:
    """Dense, lexical weights (source ids) and multi-vectors of the masked model, source tokenizer."""
    features = model.tokenize(texts)
    out = model(features, gates=gates)
    scores = model.sparse_linear(out.token_states).squeeze(-1)  # the lexical weights before the ReLU
    if not torch.equal(torch.relu(scores) * features["attention_mask"], out.sparse_weights):
        raise AssertionError("the engine's lexical weights are not relu(sparse_linear(token states))")
    special = set(model.tokenizer.all_special_ids)
    return per_text(out.dense.numpy(), features["input_ids"], scores, out.colbert_vectors, features["attention_mask"], special)


def per_text(dense, ids: torch.Tensor, scores: torch.Tensor, vectors: torch.Tensor, mask: torch.Tensor,
             special: set[int]) -> dict:
    """Each text's outputs without padding: token ids, every token's sparse score before the ReLU (a
    random sparse head scores most tokens below zero, so the lexical weights alone would compare
    little), FlagEmbedding's lexical weights, multi-vectors."""
    lengths = mask.sum(dim=1).tolist()
    return {"dense": dense, "token_ids": [row[:n] for row, n in zip(ids.tolist(), lengths, strict=True)],
            "token_scores": [row[:n].numpy() for row, n in zip(scores, lengths, strict=True)],
            "sparse": lexical_weights(ids, torch.relu(scores), mask, special),
            "colbert": [v[: n - 1].numpy() for v, n in zip(vectors, lengths, strict=True)]}


@torch.no_grad()
def export_outputs(export_dir: Path, groups: list[list[str]], remote_code: bool) -> list[dict]:
    """The export's three outputs for each group of texts, as a user computes them with stock libraries:
    SentenceTransformer for dense vectors; AutoModel, the output heads' .pt files and
    original_token_ids.json for the others."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    sentence_transformer = SentenceTransformer(str(export_dir), device="cpu", trust_remote_code=remote_code)
    model = AutoModel.from_pretrained(export_dir, trust_remote_code=remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    heads = {}
    for name, filename in BGE_M3_HEAD_FILES.items():
        state = torch.load(export_dir / filename, map_location="cpu", weights_only=True)
        heads[name] = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        heads[name].load_state_dict(state)
    original_ids = torch.tensor(json.loads((export_dir / ORIGINAL_IDS_FILE).read_text()))
    special = {int(original_ids[i]) for i in tokenizer.all_special_ids}
    outputs = []
    for texts in groups:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"]
        scores = heads["sparse_linear"](states).squeeze(-1)
        vectors = torch.nn.functional.normalize(heads["colbert_linear"](states[:, 1:]) * mask[:, 1:, None], dim=-1)
        dense = sentence_transformer.encode(texts)
        outputs.append(per_text(dense, original_ids[batch["input_ids"]], scores, vectors, mask, special))
    return outputs


def differences(expected: dict, actual: dict) -> dict[str, float]:
    """Largest absolute differences of the three outputs (the sparse one also over every token's score
    before the ReLU); the token ids (the source's) and the ids of the lexical weights must be the same."""
    if expected["token_ids"] != actual["token_ids"]:
        raise AssertionError("the export's tokens, mapped to the source's ids, differ from the source tokenizer's")
    for want, got in zip(expected["sparse"], actual["sparse"], strict=True):
        if set(want) != set(got):
            raise AssertionError(f"lexical weights differ in token ids: {sorted(set(want) ^ set(got))[:10]}")
    sparse = max(max((abs(want[t] - got[t]) for t in want), default=0.0) for want, got in zip(expected["sparse"], actual["sparse"], strict=True))
    scores = max(float(np.abs(a - b).max()) for a, b in zip(expected["token_scores"], actual["token_scores"], strict=True))
    colbert = max(float(np.abs(a - b).max()) for a, b in zip(expected["colbert"], actual["colbert"], strict=True))
    return {"dense": float(np.abs(expected["dense"] - actual["dense"]).max()), "sparse": sparse,
            "sparse_scores": scores, "colbert": colbert}


def verify_export(run_dir: Path, source: str = BGE_M3_HUB_ID, per_language: int = 4) -> dict:
    """The export's outputs against the masked model's, per language: the largest differences."""
    export_dir = run_dir / "export"
    remote_code = json.loads((export_dir / "pruning_info.json").read_text())["needs_trust_remote_code"]
    model, gates = masked_model(source, run_dir)
    from transformers import AutoTokenizer

    export_tokenizer = AutoTokenizer.from_pretrained(export_dir)
    original_ids = np.array(json.loads((export_dir / ORIGINAL_IDS_FILE).read_text()))
    chosen = {language: covered_test_sentences(export_tokenizer, model.tokenizer, original_ids, language, per_language)
              for language in LANGUAGES}
    exported = export_outputs(export_dir, [texts for texts, _ in chosen.values()], remote_code)
    result = {}
    for (language, (texts, read)), actual in zip(chosen.items(), exported, strict=True):
        expected = masked_outputs(model, gates, texts)
        result[language] = {"texts": len(texts), "test_sentences_read": read,
                            "tokens": sum(len(ids) for ids in expected["token_ids"]),
                            "lexical_weights": sum(len(weights) for weights in expected["sparse"]),
                            "max_abs_difference": differences(expected, actual)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="a new folder outside the repository (run, log, caches)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bge_m3_path_cpu.json")
    args = parser.parse_args()
    if args.work_dir.exists():
        parser.error(f"{args.work_dir} exists: give a new folder")
    if os.environ.get("HF_HUB_OFFLINE") != "1" or not os.environ.get("HF_HUB_CACHE"):
        parser.error("set HF_HUB_CACHE to the stand-in's cache and HF_HUB_OFFLINE=1 (see the docstring)")
    args.work_dir.mkdir(parents=True)
    environment = describe()
    env = {**os.environ, "PRUNE_ENGINE_CACHE": str(args.work_dir / "cache")}  # the original's encodings: not the user's cache
    run = run_cli(args.work_dir / "run", env=env)
    print(json.dumps(run), flush=True)
    figures = run_figures(args.work_dir / "run")
    print(json.dumps(figures["timings_s"]), flush=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    checks = verify_export(args.work_dir / "run")
    print(json.dumps(checks), flush=True)
    result = {"environment": finished(environment), "run": run, **figures, "export_check": checks,
              "export_check_s": round(time.perf_counter() - started, 1), "tolerance": TOLERANCE}
    worst = max(d for c in checks.values() for d in c["max_abs_difference"].values())
    result["export_equals_masked_model"] = worst <= TOLERANCE
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}; largest difference {worst:.2e}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
