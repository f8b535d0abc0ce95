"""The machine a benchmark ran on, recorded beside its figures.

Timings only compare within one run on one machine, and a busy box slows them: every result file
says which processor (or GPU), how much memory, how many threads, which torch, the command, and the load average
before and after the measurement.

    >>> environment = describe()
    >>> sorted(environment)
    ['command', 'date', 'load_before', 'machine', 'memory_gb', 'threads', 'torch']
    >>> sorted(finished(environment))[2]
    'load_after'
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_engine.latency import machine_description  # noqa: E402


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def describe(device: torch.device | None = None) -> dict:
    """Taken before measuring: the processor and its core count, or the GPU's name."""
    script = Path(sys.argv[0])
    shown = f"benchmarks/{script.name}" if script.parent.name == "benchmarks" else str(script)
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"machine": machine_description(device or torch.device("cpu")), "memory_gb": memory_gb,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "command": " ".join(["python", shown, *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load_average()}


def finished(environment: dict) -> dict:
    """Adds the load average after measuring."""
    environment["load_after"] = load_average()
    return environment
