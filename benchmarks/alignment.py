"""What rounding the kept widths to hardware-friendly multiples buys, at the same size.

For several random gate scores (seeded), the same parameter budget gives unaligned final masks and
masks whose FFN widths per layer are multiples of `--multiple` (`targets.Alignment`); the real
MiniLM is sliced to both and their encoder forwards are timed in interleaved rounds
(`latency.time_interleaved`), on one thread with the CPU clock (steady on a shared box), at batch
32 x 128 and 1 x 128.

    python benchmarks/alignment.py --multiple 64 --structures 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, finished  # noqa: E402
from prune_engine.accounting import count_parameters  # noqa: E402
from prune_engine.l0 import L0Masks  # noqa: E402
from prune_engine.latency import random_tokens, time_interleaved  # noqa: E402
from prune_engine.prune import prune_encoder  # noqa: E402
from prune_engine.sources import load_embedder  # noqa: E402
from prune_engine.targets import Alignment, ParameterBudget  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def random_masks(config, seed: int) -> L0Masks:
    """Gates with random scores, as an undecided mask phase leaves them: every width differs."""
    masks = L0Masks(config, ("heads", "ffn"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in masks.groups.values():
            group.log_alpha.copy_(torch.randn(group.log_alpha.shape, generator=generator))
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument("--structures", type=int, default=5)
    parser.add_argument("--keep", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    environment = describe()
    encoder = load_embedder("minilm").encoder.eval()
    config = encoder.config
    budget = ParameterBudget.from_fraction(config, args.keep)
    rows = []
    for seed in range(args.structures):
        masks = random_masks(config, seed)
        pair = {"unaligned": budget.final_masks(masks), "aligned": budget.final_masks(masks, Alignment(ffn=args.multiple))}
        models = {name: prune_encoder(encoder, m).eval() for name, m in pair.items()}
        row = {"seed": seed}
        for name, m in pair.items():
            structure = m.kept_structure(config.vocab_size)
            row[f"{name}_ffn"] = list(structure.intermediate_sizes)
            row[f"{name}_encoder_parameters"] = count_parameters(config, structure).encoder
        for batch in (32, 1):
            ids = random_tokens(config.vocab_size, config.pad_token_id, batch, 128, seed)
            (unaligned, aligned), _ = time_interleaved([models["unaligned"], models["aligned"]], ids, None, "cpu")
            row[f"batch{batch}_unaligned_ms"], row[f"batch{batch}_aligned_ms"] = 1000 * unaligned, 1000 * aligned
            row[f"batch{batch}_aligned_speedup"] = unaligned / aligned
        rows.append(row)
        print(row, flush=True)
    summary = {f"batch{b}_median_speedup": statistics.median(r[f"batch{b}_aligned_speedup"] for r in rows) for b in (32, 1)}
    result = {"environment": finished(environment), "clock": "cpu", "budget_encoder_parameters": budget.parameters,
              "multiple": args.multiple, "rows": rows, **summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "alignment_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
