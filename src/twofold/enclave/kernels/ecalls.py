"""Fit and predict ecalls shared by every partitioned algorithm, for both release policies.

- ``release="statistics"``: per-partition statistics leave the enclave in the clear; the driver updates.
- ``release="sealed"``: statistics and model state are sealed under the job key; combining and updating run
  here, and the model leaves only sealed under a key that only the owner and attested enclaves can derive.
"""

from __future__ import annotations

from typing import Any

from twofold.crypto import sealing
from twofold.crypto.mac import mac_context
from twofold.enclave.kernels import arrays
from twofold.enclave.kernels.base import algorithm
from twofold.enclave.kernels.features import matrix
from twofold.enclave.registry import ecall
from twofold.enclave.state import EnclaveState, PartitionCache
from twofold.errors import ConfigError, ProtocolError

RELEASES = ("statistics", "sealed")
_SIMPLE = (bool, int, float, str)


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    if not all(isinstance(k, str) and isinstance(v, _SIMPLE) for k, v in params.items()):
        raise ProtocolError("algorithm parameters must be simple values")
    return params


def _features(state: EnclaveState, dataset_id: str, index: int, columns: list[str], label: str):
    if state.derived is None:
        with state.lock:
            if state.derived is None:
                state.derived = PartitionCache(state.cache.max_bytes)
    key = (dataset_id, f"{index}|{','.join(columns)}|{label}")
    cached = state.derived.get(key)
    if cached is None:
        X, y = matrix(state.partition(dataset_id, index), list(columns), label or None)
        cached = (X, y)
        state.derived.put(key, cached, X.nbytes + (y.nbytes if y is not None else 0))
    return cached


def _job_key(state: EnclaveState, dataset_id: str, job: str) -> bytes:
    return sealing.job_key(state.dataset(dataset_id).mac_key, job)


def _release(release: str) -> str:
    if release not in RELEASES:
        raise ConfigError(f"release must be one of {RELEASES}")
    return release


@ecall("fit_stats", args={"dataset_id": str, "index": int, "algorithm": str, "columns": list, "label": str,
                          "params": dict, "release": str, "job": str, "iteration": int, "model_state": bytes},
       result={"stats": bytes})
def fit_stats(state: EnclaveState, dataset_id: str, index: int, algorithm: str, columns: list, label: str,
              params: dict, release: str, job: str, iteration: int, model_state: bytes) -> dict[str, Any]:
    """One partition's statistics for the current model state."""
    algo, sealed = _algorithm(algorithm), _release(release) == "sealed"
    key = _job_key(state, dataset_id, job) if sealed else b""
    opened_state = sealing.open_(key, model_state, sealing.state_aad(job, iteration)) if sealed else model_state
    current = arrays.unpack(opened_state)
    X, y = _features(state, dataset_id, index, columns, label if algo.uses_label else "")
    stats = arrays.pack(algo.stats(X, y, current, _check_params(params), index))
    return {"stats": sealing.seal(key, stats, sealing.stats_aad(job, iteration, index)) if sealed else stats}


def _algorithm(name: str):
    return algorithm(name)


@ecall("fit_init", args={"dataset_id": str, "algorithm": str, "params": dict, "job": str, "num_features": int},
       result={"state": bytes})
def fit_init(state: EnclaveState, dataset_id: str, algorithm: str, params: dict, job: str,
             num_features: int) -> dict[str, Any]:
    """A sealed initial state (sealed release)."""
    initial = _algorithm(algorithm).init_state(_check_params(params), num_features)
    return {"state": sealing.seal(_job_key(state, dataset_id, job), arrays.pack(initial), sealing.state_aad(job, 0))}


@ecall("fit_combine", args={"dataset_id": str, "algorithm": str, "params": dict, "job": str, "iteration": int,
                            "model_state": bytes, "stats": list, "indices": list},
       result={"state": bytes, "done": bool})
def fit_combine(state: EnclaveState, dataset_id: str, algorithm: str, params: dict, job: str, iteration: int,
                model_state: bytes, stats: list, indices: list) -> dict[str, Any]:
    """Combine sealed statistics of every partition, exactly once each, and take one optimizer step."""
    expected = list(range(len(state.dataset(dataset_id).manifest.files)))
    if sorted(indices) != expected or len(stats) != len(indices):
        raise ProtocolError("statistics must cover every partition of the dataset exactly once")
    key = _job_key(state, dataset_id, job)
    current = arrays.unpack(sealing.open_(key, model_state, sealing.state_aad(job, iteration)))
    parts = [arrays.unpack(sealing.open_(key, blob, sealing.stats_aad(job, iteration, index)))
             for index, blob in sorted(zip(indices, stats, strict=True))]
    updated, done = _algorithm(algorithm).update(current, arrays.combine(parts), _check_params(params))
    return {"state": sealing.seal(key, arrays.pack(updated), sealing.state_aad(job, iteration + 1)), "done": bool(done)}


@ecall("fit_finalize", args={"dataset_id": str, "algorithm": str, "params": dict, "job": str, "iteration": int,
                             "model_state": bytes, "model_id": str},
       result={"model": bytes})
def fit_finalize(state: EnclaveState, dataset_id: str, algorithm: str, params: dict, job: str, iteration: int,
                 model_state: bytes, model_id: str) -> dict[str, Any]:
    """The trained model, sealed under the model key (sealed release)."""
    opened = state.dataset(dataset_id)
    key = sealing.job_key(opened.mac_key, job)
    current = arrays.unpack(sealing.open_(key, model_state, sealing.state_aad(job, iteration)))
    model = arrays.pack(_algorithm(algorithm).model(current, _check_params(params)))
    model_key = sealing.model_key(opened.mac_key, model_id)
    return {"model": sealing.seal(model_key, model, sealing.model_aad(model_id, algorithm))}


@ecall("seal_model", args={"dataset_id": str, "algorithm": str, "model_id": str, "model": bytes},
       result={"model": bytes})
def seal_model(state: EnclaveState, dataset_id: str, algorithm: str, model_id: str, model: bytes) -> dict[str, Any]:
    """Seal a model the driver computed (statistics release) for storage."""
    arrays.unpack(model)  # must be a well-formed bundle
    key = sealing.model_key(state.dataset(dataset_id).mac_key, model_id)
    return {"model": sealing.seal(key, model, sealing.model_aad(model_id, _algorithm(algorithm).name))}


@ecall("predict", args={"dataset_id": str, "index": int, "algorithm": str, "columns": list, "label": str,
                        "params": dict, "job": str, "model_dataset_id": str, "model_mac_key": str,
                        "model_id": str, "model": bytes},
       result={"predictions": bytes})
def predict(state: EnclaveState, dataset_id: str, index: int, algorithm: str, columns: list, label: str,
            params: dict, job: str, model_dataset_id: str, model_mac_key: str, model_id: str,
            model: bytes) -> dict[str, Any]:
    """Predictions for one partition, sealed under the job key of the dataset (for its owner)."""
    algo = _algorithm(algorithm)
    mac_key = state.broker.unwrap(model_mac_key, mac_context(model_dataset_id))
    key = sealing.model_key(mac_key, model_id)
    weights = arrays.unpack(sealing.open_(key, model, sealing.model_aad(model_id, algo.name)))
    X, y = _features(state, dataset_id, index, columns, label)
    out = {"prediction": algo.predict(weights, X, _check_params(params))}
    if y is not None:
        out["label"] = y
    sealed = sealing.seal(_job_key(state, dataset_id, job), arrays.pack(out), sealing.predictions_aad(job, index))
    return {"predictions": sealed}


