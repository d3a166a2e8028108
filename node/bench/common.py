"""Conventions shared by every ``bcfl bench`` mode: machine info, percentiles, JSON output.

Every report is one JSON object with ``benchmark`` (the mode), ``machine`` (from
:func:`get_machine_info`), the parameters, and results whose figures each carry the
duration they were measured over and their sample count.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def get_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def get_machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": get_cpu_model(),
        "cores": usable,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def get_percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of an already sorted list; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return sorted_values[int(rank) - 1]


def get_summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "samples": len(ordered),
        "p50": get_percentile(ordered, 50),
        "p95": get_percentile(ordered, 95),
        "p99": get_percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
        "mean": sum(ordered) / len(ordered) if ordered else None,
    }


def write_report(report: dict[str, Any], output: Path | None) -> str:
    text = json.dumps(report, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    return text
