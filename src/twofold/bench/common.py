"""Helpers shared by benchmarks: timing, machine facts, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """The fastest of ``repeats`` runs, in seconds (least disturbed by other load)."""
    return min(timed(fn)[0] for _ in range(repeats))


def machine() -> dict[str, Any]:
    """Facts about the machine a benchmark ran on."""
    import cryptography
    import pyarrow

    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "cryptography": cryptography.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine while this ran
    }
    for name in ("numpy", "pyspark", "gmpy2", "torch"):
        with contextlib.suppress(ImportError, AttributeError):
            facts[name] = __import__(name).__version__
    with contextlib.suppress(ValueError, OSError):
        facts["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return facts


def write_json(path: Path | str | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
