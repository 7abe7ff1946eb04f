"""The partitioned ("twofold worker") fit and predict loops.

The untrusted Spark side schedules one task per encrypted file and never decrypts: each task asks its host's
enclave for the partition's sealed statistics at the current sealed state; the driver hands them to its own
host's enclave, which combines them and takes the optimizer step. The driver only relays sealed bytes and the
"done" bit; with ``release="statistics"`` the enclave also releases the final model's weights.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twofold.enclave.kernels import arrays
from twofold.errors import ConfigError, ProtocolError
from twofold.spark.errors import translate
from twofold.spark.host_enclave import EnclaveConfig, HostEnclave

if TYPE_CHECKING:
    from twofold.spark.files import FileSet

MAX_PASSES = 1000


@dataclass(frozen=True)
class Task:
    """Everything a Spark task needs (small, picklable, no secrets)."""

    config: EnclaveConfig
    path: str
    dataset_id: str
    algorithm: str
    columns: tuple[str, ...]
    label: str
    params: dict[str, Any]
    release: str
    job: str

    def terms(self) -> dict[str, Any]:
        """The fit's terms, as every fit ecall takes them."""
        return {"dataset_id": self.dataset_id, "algorithm": self.algorithm, "columns": list(self.columns),
                "label": self.label, "params": self.params, "release": self.release, "job": self.job}


@dataclass
class FitResult:
    sealed_model: bytes
    model_id: str
    job: str
    passes: int
    model: arrays.Arrays | None  # only with release="statistics", where the driver holds it anyway
    timings: dict[str, float] = field(default_factory=dict)


def _stats_task(task: Task, iteration: int, state: bytes, indices: Iterator[int]) -> Iterator[tuple]:
    """Yields (index, statistics, seconds loading the partition, seconds in the statistics ecall)."""
    host = HostEnclave(task.config)
    for index in indices:
        began = time.perf_counter()
        if iteration == 0:
            host.ensure_partition(task.path, task.dataset_id, index)
        loaded = time.perf_counter()
        terms = {k: v for k, v in task.terms().items() if k != "dataset_id"}
        reply = host.partition_call(task.path, task.dataset_id, index, "fit_stats", iteration=iteration,
                                    model_state=state, **terms)
        yield index, reply["stats"], loaded - began, time.perf_counter() - loaded


def _collect(rdd: Any) -> list:
    try:
        return rdd.collect()
    except Exception as exc:  # Py4J/PySpark wrap task failures
        raise translate(exc) from None


class _Driver:
    """The driver's side of a fit: its host enclave, which opens the dataset from the manifest the driver read."""

    def __init__(self, task: Task, manifest: bytes) -> None:
        self.task = task
        self.manifest = manifest
        self.host = HostEnclave(task.config)
        self.host.open_manifest(manifest)

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        return self.host.dataset_call(self.manifest, name, **self.task.terms(), **args)


def fit(index_rdd: Any, files: FileSet, task: Task, progress: Callable[[int], None] | None = None) -> FitResult:
    """Run a partitioned fit to convergence; ``index_rdd`` holds the partition indices, one per Spark partition."""
    if task.release not in ("statistics", "sealed"):
        raise ConfigError("release must be 'statistics' or 'sealed'")
    driver = _Driver(task, files.manifest.to_bytes())
    num_files = len(files.manifest.files)
    timings = dict.fromkeys(("wall", "load", "stats_ecalls", "update"), 0.0)
    began = time.perf_counter()
    state = driver.call("fit_init")["state"]
    for iteration in range(MAX_PASSES):
        results = sorted(_collect(index_rdd.mapPartitions(
            lambda it, i=iteration, s=state: _stats_task(task, i, s, it))))
        indices = [r[0] for r in results]
        if indices != list(range(num_files)):
            raise ProtocolError("the job did not produce statistics for every partition exactly once")
        timings["load"] += sum(r[2] for r in results)
        timings["stats_ecalls"] += sum(r[3] for r in results)
        update_began = time.perf_counter()
        reply = driver.call("fit_combine", iteration=iteration, model_state=state, stats=[r[1] for r in results],
                            indices=indices)
        state, done = reply["state"], reply["done"]
        timings["update"] += time.perf_counter() - update_began
        if progress:
            progress(1)
        if done:
            break
    else:
        raise ConfigError(f"{task.algorithm} did not finish within {MAX_PASSES} passes")
    model_id = "m-" + secrets.token_hex(8)
    passes = iteration + 1
    reply = driver.call("fit_finalize", iteration=passes, model_state=state, model_id=model_id)
    model = arrays.unpack(reply["weights"]) if task.release == "statistics" else None
    timings["wall"] = time.perf_counter() - began
    return FitResult(reply["model"], model_id, task.job, passes, model, timings)


def new_job() -> str:
    return "job-" + secrets.token_hex(8)


def _predict_task(task: Task, model: dict[str, Any], with_label: bool,
                  indices: Iterator[int]) -> Iterator[tuple[int, bytes]]:
    host = HostEnclave(task.config)
    for index in indices:
        reply = host.partition_call(task.path, task.dataset_id, index, "predict", job=task.job, model=model,
                                    with_label=with_label)
        yield index, reply["predictions"]


def predict(index_rdd: Any, files: FileSet, task: Task, model: dict[str, Any],
            with_label: bool) -> list[tuple[int, bytes]]:
    """Sealed predictions for the partitions of ``files`` (which ``index_rdd`` holds), in index order; ``model``
    holds the model file's description, model_id, mac_key and sealed weights; ``with_label`` keeps the model's
    label column of the dataset beside them."""
    HostEnclave(task.config).open_manifest(files.manifest.to_bytes())
    results = sorted(_collect(index_rdd.mapPartitions(lambda it: _predict_task(task, model, with_label, it))))
    if [i for i, _ in results] != sorted(files.indices):
        raise ProtocolError("the job did not produce predictions for every partition exactly once")
    return results
