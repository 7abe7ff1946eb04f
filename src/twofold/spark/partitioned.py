"""The partitioned ("twofold worker") fit and predict loops.

The untrusted Spark side schedules one task per encrypted file and never decrypts: each task asks its host's
enclave for the partition's statistics (in the clear or sealed, by release policy); the driver combines them and
updates the model (statistics) or has its enclave do it on sealed data (sealed).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twofold.enclave.kernels import arrays
from twofold.enclave.kernels.base import algorithm as get_algorithm
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
        reply = host.partition_call(task.path, task.dataset_id, index, "fit_stats", algorithm=task.algorithm,
                                    columns=list(task.columns), label=task.label, params=task.params,
                                    release=task.release, job=task.job, iteration=iteration, model_state=state)
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
        t = self.task
        return self.host.dataset_call(self.manifest, name, dataset_id=t.dataset_id, algorithm=t.algorithm, **args)


def fit(index_rdd: Any, files: FileSet, task: Task, progress: Callable[[int], None] | None = None) -> FitResult:
    """Run a partitioned fit to convergence; ``index_rdd`` holds the partition indices, one per Spark partition."""
    if task.release not in ("statistics", "sealed"):
        raise ConfigError("release must be 'statistics' or 'sealed'")
    algo = get_algorithm(task.algorithm)
    driver = _Driver(task, files.manifest.to_bytes())
    num_files = len(files.manifest.files)
    sealed = task.release == "sealed"
    timings = dict.fromkeys(("wall", "load", "stats_ecalls", "update"), 0.0)
    began = time.perf_counter()
    if sealed:
        state = driver.call("fit_init", params=task.params, job=task.job, num_features=len(task.columns))["state"]
    else:
        state = arrays.pack(algo.init_state(task.params, len(task.columns)))
    for iteration in range(MAX_PASSES):
        results = sorted(_collect(index_rdd.mapPartitions(
            lambda it, i=iteration, s=state: _stats_task(task, i, s, it))))
        indices = [r[0] for r in results]
        if indices != list(range(num_files)):
            raise ProtocolError("the job did not produce statistics for every partition exactly once")
        timings["load"] += sum(r[2] for r in results)
        timings["stats_ecalls"] += sum(r[3] for r in results)
        update_began = time.perf_counter()
        if sealed:
            reply = driver.call("fit_combine", params=task.params, job=task.job, iteration=iteration,
                                model_state=state, stats=[r[1] for r in results], indices=indices)
            state, done = reply["state"], reply["done"]
        else:
            total = arrays.combine([arrays.unpack(r[1]) for r in results])
            updated, done = algo.update(arrays.unpack(state), total, task.params)
            state = arrays.pack(updated)
        timings["update"] += time.perf_counter() - update_began
        if progress:
            progress(1)
        if done:
            break
    else:
        raise ConfigError(f"{task.algorithm} did not finish within {MAX_PASSES} passes")
    model_id = "m-" + secrets.token_hex(8)
    passes = iteration + 1
    model = None
    if sealed:
        sealed_model = driver.call("fit_finalize", params=task.params, job=task.job, iteration=passes,
                                   model_state=state, model_id=model_id)["model"]
    else:
        model = algo.model(arrays.unpack(state), task.params)
        sealed_model = driver.call("seal_model", model_id=model_id, model=arrays.pack(model))["model"]
    timings["wall"] = time.perf_counter() - began
    return FitResult(sealed_model, model_id, task.job, passes, model, timings)


def new_job() -> str:
    return "job-" + secrets.token_hex(8)


def _predict_task(task: Task, model: dict[str, Any], indices: Iterator[int]) -> Iterator[tuple[int, bytes]]:
    host = HostEnclave(task.config)
    for index in indices:
        reply = host.partition_call(task.path, task.dataset_id, index, "predict", algorithm=task.algorithm,
                                    columns=list(task.columns), label=task.label, params=task.params, job=task.job,
                                    **model)
        yield index, reply["predictions"]


def predict(index_rdd: Any, files: FileSet, task: Task, model: dict[str, Any]) -> list[tuple[int, bytes]]:
    """Sealed predictions for the partitions of ``files`` (which ``index_rdd`` holds), in index order; ``model``
    holds model_dataset_id, model_mac_key, model_id and model."""
    HostEnclave(task.config).open_manifest(files.manifest.to_bytes())
    results = sorted(_collect(index_rdd.mapPartitions(lambda it: _predict_task(task, model, it))))
    if [i for i, _ in results] != sorted(files.indices):
        raise ProtocolError("the job did not produce predictions for every partition exactly once")
    return results
