"""``twofold bench all``: every benchmark, sized for one machine, in one JSON document."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from twofold.bench.common import machine

FULL = {
    "encrypt": {"rows": 1_000_000, "cols": 20},
    "kbs": {"attestations": 300, "concurrency": 8},
    "spark": {"rows": 500_000, "cols": 50, "partitions": 8},
    "he": {"dataset": "breast_cancer", "algorithms": ["nb", "lr", "dt"], "key_bits": 2048},
    "servers": {"key_bits": 2048},
    "torch": {"device": "cpu"},
    "dp_sgd": {"device": "cpu"},
}
QUICK = {
    "encrypt": {"rows": 200_000, "cols": 20},
    "kbs": {"attestations": 100, "concurrency": 8},
    "spark": {"rows": 100_000, "cols": 20, "partitions": 4},
    "he": {"dataset": "breast_cancer", "algorithms": ["nb"], "key_bits": 2048, "max_queries": 30},
    "servers": {"key_bits": 2048, "levels": (1, 10, 64)},
    "torch": {"device": "cpu", "synthetic_rows": 50_000, "repeats": 1},
    "dp_sgd": {"device": "cpu", "seeds": 2},
}


def _runners(log: Callable[[str], None], quiet: bool) -> dict[str, Callable[..., dict[str, Any]]]:
    def encrypt(**kw: Any) -> dict[str, Any]:
        from twofold.bench import encrypt as module

        return module.run(kw["rows"], kw["cols"])

    def kbs(**kw: Any) -> dict[str, Any]:
        from twofold.bench import kbs as module

        return module.run(kw["attestations"], kw["concurrency"])

    def spark(**kw: Any) -> dict[str, Any]:
        from twofold.bench import spark_bench
        from twofold.spark import catalog

        return spark_bench.run(kw["rows"], kw["cols"], list(catalog.ALGORITHMS), kw["partitions"], log=log,
                               quiet=quiet)

    def he(**kw: Any) -> dict[str, Any]:
        from twofold.bench import he as module

        return module.run(kw["dataset"], None, kw["algorithms"], kw["key_bits"],
                          max_queries=kw.get("max_queries"), log=log)

    def servers(**kw: Any) -> dict[str, Any]:
        from twofold.bench import servers as module

        return module.run(log=log, **kw)

    def torch(**kw: Any) -> dict[str, Any]:
        from twofold.bench import torch_bench

        return torch_bench.run(**kw)

    def dp_sgd(**kw: Any) -> dict[str, Any]:
        from twofold.bench import dp_sgd as module

        return module.run(**kw)

    return {"encrypt": encrypt, "kbs": kbs, "spark": spark, "he": he, "servers": servers, "torch": torch,
            "dp_sgd": dp_sgd}


def run(quick: bool = False, only: list[str] | None = None, log: Callable[[str], None] = lambda _: None,
        quiet: bool = True) -> dict[str, Any]:
    """Run the benchmarks; one that fails is recorded with its error and the rest still run (``quiet``: see
    :func:`twofold.spark.get_spark`)."""
    sizes = QUICK if quick else FULL
    runs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, runner in _runners(log, quiet).items():
        if only and name not in only:
            continue
        needs = {"torch": "torch", "dp_sgd": "opacus"}.get(name)
        if needs:
            try:
                __import__(needs)
            except ImportError:
                errors[name] = f"skipped: {needs} is not installed"
                log(f"{name}: skipped ({needs} not installed)")
                continue
        log(f"== {name} ==")
        began = time.perf_counter()
        try:
            runs[name] = runner(**sizes[name])
        except Exception as exc:  # keep the others; say exactly what failed
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {errors[name]}")
            log("".join(traceback.format_exception_only(exc)).strip())
        log(f"{name}: {time.perf_counter() - began:.1f} s")
    return {"benchmark": "all", "quick": quick, "sizes": sizes, "machine": machine(), "runs": runs,
            "errors": errors, "finished": time.time()}
