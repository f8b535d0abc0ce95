"""Time and peak memory of each stage the engine puts BGE-M3 through, at full size, on the stand-in
`bge_m3_standin.py` writes (random weights, the real shape and files): loading it by hub id,
`encode_multi`, planning a trimmed vocabulary, trimming, and exporting.

    python benchmarks/bge_m3_standin.py --cache /work/bge-m3-standin-cache
    HF_HUB_CACHE=/work/bge-m3-standin-cache HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/bge_m3_stages.py --out-dir /tmp/bge-m3-exports

One process runs the stages in order; before each, Linux's peak-RSS mark is reset
(/proc/self/clear_refs), so each stage's peak is its own: `peak_rss_gb` is the process's peak
during the stage, `extra_gb` how far that rose above the memory held when the stage began. RSS
counts the pages of a memory-mapped checkpoint while they are mapped (the kernel can drop them:
they are the page cache's); `anonymous_after_gb` is the memory the process itself holds after it.
Writes benchmarks/results/bge_m3_stages_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.config import VocabConfig  # noqa: E402
from prune_engine.export import export_embedder, pruning_info  # noqa: E402
from prune_engine.sources import BGE_M3_HUB_ID, load_embedder  # noqa: E402
from prune_engine.vocab import plan_for_run, trim_embedder  # noqa: E402

LANGUAGES = ("en", "de", "fr", "zh", "ru")
DATA_DIR = Path(os.environ.get("PRUNE_ENGINE_DATA", ROOT.parent / "shared" / "data"))
TEXT_TOKENS = 128


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")


@contextmanager
def stage(name: str, rows: list[dict]):
    """Records the stage's wall time, its peak RSS and how far that rose above the RSS it began with."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = memory_kb("VmRSS")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak = memory_kb("VmHWM")
    row = {"stage": name, "seconds": round(seconds, 2), "peak_rss_gb": round(peak / 2**20, 2),
           "extra_gb": round((peak - before) / 2**20, 2), "rss_after_gb": round(memory_kb("VmRSS") / 2**20, 2),
           "anonymous_after_gb": round(memory_kb("RssAnon") / 2**20, 2)}
    rows.append(row)
    print(json.dumps(row), flush=True)


def texts_of_about(tokenizer, language: str, count: int = 4, tokens: int = TEXT_TOKENS) -> list[str]:
    """`count` texts of about `tokens` tokens each: consecutive STS-B test sentences joined."""
    with (DATA_DIR / "stsb" / f"stsb-{language}-test.tsv").open(encoding="utf-8", newline="") as handle:
        sentences = [row["sentence1"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    texts, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if len(tokenizer(" ".join(current))["input_ids"]) >= tokens:
            texts.append(" ".join(current))
            current = []
            if len(texts) == count:
                return texts
    raise RuntimeError(f"STS-B {language} test is too short for {count} texts of {tokens} tokens")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True, help="a new folder outside the repository for the exports")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bge_m3_stages_cpu.json")
    args = parser.parse_args()
    if args.out_dir.exists():
        parser.error(f"{args.out_dir} exists: give a new folder (the benchmark removes only what it writes there)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows: list[dict] = []
    environment = describe()
    with stage("load_embedder('BAAI/bge-m3')", rows):
        embedder = load_embedder(BGE_M3_HUB_ID)
    for language in LANGUAGES:
        texts = texts_of_about(embedder.tokenizer, language)
        with stage(f"encode_multi 4 x ~{TEXT_TOKENS} tokens ({language})", rows):
            embedder.encode_multi(texts)
    with stage("plan_for_run (STS-B train+dev, 5 languages)", rows):
        plan = plan_for_run(embedder.tokenizer, VocabConfig(languages=list(LANGUAGES)))
    with stage(f"trim_embedder (to {plan.vocab_size:,} tokens)", rows):
        trimmed = trim_embedder(embedder, plan)
    args.out_dir.mkdir(parents=True)
    try:
        with stage("export_embedder (trimmed)", rows):
            export_embedder(trimmed, args.out_dir / "trimmed", pruning_info(trimmed, BGE_M3_HUB_ID, embedder.config, vocabulary=plan.summary()))
        del trimmed
        with stage("export_embedder (full)", rows):
            export_embedder(embedder, args.out_dir / "full", pruning_info(embedder, BGE_M3_HUB_ID, embedder.config))
    finally:
        shutil.rmtree(args.out_dir)
    args.json.write_text(json.dumps({"environment": finished(environment), "stages": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
