"""Fit and predict ecalls shared by every partitioned algorithm, for both release policies.

The enclave runs the whole fit: it hands out the initial state, computes each partition's statistics at a state
it sealed itself, combines every partition's statistics exactly once per iteration and takes the optimizer
step. States and statistics always leave sealed under the job key, bound to the fit's terms (dataset,
algorithm, columns, label, parameters, release), so the driver relays them but cannot choose the points where
statistics are computed, nor vary a parameter mid-fit. What differs by release is the end:

- ``release="sealed"``: only the model sealed under the model key (for the owner and attested enclaves) leaves.
- ``release="statistics"``: the trained model also leaves in the clear, if every group of rows it was computed
  from holds at least the owner's minimum group size.

Before anything runs, the dataset's rule from the owner's policy (released, signed, with its MAC key) must allow
the release mode, the algorithm, the columns and the parameter values.
"""

from __future__ import annotations

import json
from hashlib import sha256
from typing import Any

import numpy as np

from twofold.crypto import sealing
from twofold.crypto.mac import mac_context
from twofold.enclave.kernels import arrays
from twofold.enclave.kernels.base import Algorithm, find_algorithm
from twofold.enclave.kernels.features import matrix
from twofold.enclave.registry import ecall
from twofold.enclave.state import EnclaveState, OpenedDataset, PartitionCache
from twofold.errors import ConfigError, PolicyError, ProtocolError

RELEASES = ("statistics", "sealed")
_SIMPLE = (bool, int, float, str)
_GROUP_ARRAYS = ("n", "count", "counts", "cat_weights")  # statistics that count the rows behind an aggregate
_MIN_GROUP = "_min_group"  # the smallest group any combined statistic of this fit described (kept in the state)
_DONE = "_done"  # 1 once the fit converged: only such a state may be finalized
_MAX_JOBS = 256  # fits whose last combine is remembered (per enclave), to answer a repeated call identically

_FIT = {"dataset_id": str, "algorithm": str, "columns": list, "label": str, "params": dict, "release": str,
        "job": str}


class _Fit:
    """One fit's checked terms, its dataset and its job key."""

    def __init__(self, state: EnclaveState, dataset_id: str, algorithm: str, columns: list, label: str,
                 params: dict, release: str, job: str) -> None:
        if release not in RELEASES:
            raise ConfigError(f"release must be one of {RELEASES}")
        if not all(isinstance(c, str) for c in columns) or not all(
                isinstance(k, str) and isinstance(v, _SIMPLE) for k, v in params.items()):
            raise ProtocolError("columns must be names and algorithm parameters simple values")
        self.algo: Algorithm = find_algorithm(algorithm)
        self.opened: OpenedDataset = state.dataset(dataset_id)
        self.label = label if self.algo.uses_label else ""
        self.columns, self.params, self.release, self.job = list(columns), params, release, job
        self.opened.rule.check(release, self.algo.name, [*self.columns, self.label], params)
        if len(set(self.columns)) != len(self.columns):
            raise ProtocolError("feature columns must be distinct")
        # the manifest's MAC names this exact dataset version: a fit cannot mix versions that share an id
        self.terms = sealing.job_terms(f"{dataset_id}|{self.opened.manifest.mac}", self.algo.name, self.columns,
                                       self.label, params, release)
        self.key = sealing.job_key(self.opened.mac_key, job)

    def seal_state(self, current: arrays.Arrays, iteration: int) -> bytes:
        return sealing.seal(self.key, arrays.pack(current), sealing.state_aad(self.job, self.terms, iteration))

    def open_state(self, blob: bytes, iteration: int) -> arrays.Arrays:
        """A state this enclave sealed for this fit and iteration; anything else is the opaque IntegrityError."""
        return arrays.unpack(sealing.open_(self.key, blob, sealing.state_aad(self.job, self.terms, iteration)))


def _features(state: EnclaveState, dataset_id: str, index: int, columns: list[str], label: str):
    if state.derived is None:
        with state.lock:
            if state.derived is None:
                state.derived = PartitionCache(state.cache.max_bytes)
    key = (dataset_id, json.dumps([index, list(columns), label]))
    cached = state.derived.get(key)
    if cached is None:
        X, y = matrix(state.partition(dataset_id, index), list(columns), label or None)
        cached = (X, y)
        state.derived.put(key, cached, X.nbytes + (y.nbytes if y is not None else 0))
    return cached


def _smallest_group(total: arrays.Arrays, num_rows: int) -> float:
    """The fewest rows behind any aggregate of a combined statistic (all rows if it counts none)."""
    counts = np.concatenate([np.ravel(total[name]) for name in _GROUP_ARRAYS if name in total] or [np.zeros(0)])
    positive = counts[counts > 0]
    return float(positive.min()) if positive.size else float(num_rows)


@ecall("fit_init", args=_FIT, result={"state": bytes})
def fit_init(state: EnclaveState, **fit: Any) -> dict[str, Any]:
    """The fit's initial state, sealed for iteration 0 (under the dataset's rule as the key broker holds it now)."""
    state.refresh_rule(fit["dataset_id"])
    job = _Fit(state, **fit)
    initial = {**job.algo.init_state(job.params, len(job.columns)), _MIN_GROUP: np.array([np.inf]),
               _DONE: np.zeros(1)}
    return {"state": job.seal_state(initial, 0)}


@ecall("fit_stats", args={**_FIT, "index": int, "iteration": int, "model_state": bytes}, result={"stats": bytes})
def fit_stats(state: EnclaveState, index: int, iteration: int, model_state: bytes, **fit: Any) -> dict[str, Any]:
    """One partition's statistics at a state this enclave sealed for this fit, sealed for fit_combine."""
    job = _Fit(state, **fit)
    current = job.open_state(model_state, iteration)
    X, y = _features(state, job.opened.dataset_id, index, job.columns, job.label)
    stats = arrays.pack(job.algo.stats(X, y, current, job.params, index))
    return {"stats": sealing.seal(job.key, stats, sealing.stats_aad(job.job, job.terms, iteration, index))}


@ecall("fit_combine", args={**_FIT, "iteration": int, "model_state": bytes, "stats": list, "indices": list},
       result={"state": bytes, "done": bool})
def fit_combine(state: EnclaveState, iteration: int, model_state: bytes, stats: list, indices: list,
                **fit: Any) -> dict[str, Any]:
    """Combine sealed statistics of every partition, exactly once each, and take one optimizer step.

    Each (job, iteration) is combined once: a repeated call of a fit's latest combine with the same inputs gets
    the same answer (a retry after a lost reply); another combine of that or an earlier pass is refused. A
    converged state is final: it is not combined further.
    """
    job = _Fit(state, **fit)
    expected = list(range(len(job.opened.manifest.files)))
    if sorted(indices) != expected or len(stats) != len(indices) or not all(isinstance(b, bytes) for b in stats):
        raise ProtocolError("statistics must cover every partition of the dataset exactly once")
    inputs = sha256(b"".join(sha256(b).digest() for b in [model_state, *stats])).hexdigest() + repr(indices)
    key = f"{job.job}|{job.terms}"
    with state.lock:
        seen = state.combined.get(key)
    if seen is not None and iteration <= seen[0]:
        if iteration == seen[0] and seen[1] == inputs:
            return seen[2]
        raise ProtocolError(f"iteration {iteration} of this fit was already combined")
    current = job.open_state(model_state, iteration)
    if current[_DONE][0]:
        raise ProtocolError("this fit has converged: finalize it")
    parts = [arrays.unpack(sealing.open_(job.key, blob, sealing.stats_aad(job.job, job.terms, iteration, index)))
             for index, blob in sorted(zip(indices, stats, strict=True))]
    total = arrays.combine(parts)
    updated, done = job.algo.update(current, total, job.params)
    smallest = min(float(current[_MIN_GROUP][0]), _smallest_group(total, job.opened.manifest.num_rows))
    final = {**updated, _MIN_GROUP: np.array([smallest]), _DONE: np.array([1.0 if done else 0.0])}
    reply = {"state": job.seal_state(final, iteration + 1), "done": bool(done)}
    with state.lock:
        latest = state.combined.get(key)
        if latest is None or latest[0] < iteration:
            state.combined.pop(key, None)
            state.combined[key] = (iteration, inputs, reply)  # one entry per fit: its latest combine
            while len(state.combined) > _MAX_JOBS:
                del state.combined[next(iter(state.combined))]
        elif latest[0] == iteration and latest[1] == inputs:
            return latest[2]  # a concurrent identical call won the race: the same answer
        else:
            raise ProtocolError(f"iteration {iteration} of this fit was already combined")
    return reply


@ecall("fit_finalize", args={**_FIT, "iteration": int, "model_state": bytes, "model_id": str},
       result={"model": bytes, "weights": bytes})
def fit_finalize(state: EnclaveState, iteration: int, model_state: bytes, model_id: str,
                 **fit: Any) -> dict[str, Any]:
    """The trained model sealed under the model key, bound to its description and this fit's transcript; with
    ``release="statistics"`` also its weights in the clear, if every group behind them is large enough."""
    job = _Fit(state, **fit)
    current = job.open_state(model_state, iteration)
    if not current[_DONE][0]:
        raise ProtocolError("only a converged fit can be finalized")
    model = arrays.pack(job.algo.model(current, job.params))
    description = _description(job.algo.name, job.release, job.opened.dataset_id, job.columns, job.label,
                               job.params, job.job, iteration)
    sealed = sealing.seal(sealing.model_key(job.opened.mac_key, model_id), model,
                          sealing.model_aad(model_id, description))
    if job.release == "sealed":
        return {"model": sealed, "weights": b""}
    smallest, needed = float(current[_MIN_GROUP][0]), job.opened.rule.min_group_size
    if smallest < needed:
        raise PolicyError(f"the model describes a group of fewer than {needed} rows, the owner's minimum for a "
                          "statistics release; train with release='sealed' or change the parameters")
    return {"model": sealed, "weights": model}


def _description(algorithm_name: str, release: str, dataset_id: str, columns: list[str], label: str,
                 params: dict[str, Any], job: str, passes: int) -> dict[str, Any]:
    """A partitioned model's description (the fields of ``twofold.data.models.model_description``)."""
    return {"algorithm": algorithm_name, "mode": "partitioned", "release": release, "dataset_id": dataset_id,
            "columns": list(columns), "label": label, "params": params, "job": job, "passes": passes}


@ecall("predict", args={"dataset_id": str, "index": int, "job": str, "model": dict, "with_label": bool},
       result={"predictions": bytes})
def predict(state: EnclaveState, dataset_id: str, index: int, job: str, model: dict,
            with_label: bool) -> dict[str, Any]:
    """Predictions for one partition with the model's own features, sealed under the dataset's job key.

    ``model`` is the model file's description, id, wrapped MAC key and sealed weights; the description is the
    sealed model's associated data, so a caller cannot make the enclave use other columns or another label.
    ``with_label`` adds the partition's values of the model's label (for evaluation by the owner).
    """
    try:
        description = {name: model[name] for name in ("algorithm", "mode", "release", "dataset_id", "columns",
                                                      "label", "params", "job", "passes")}
        model_id, wrapped, blob = str(model["model_id"]), str(model["mac_key"]), model["sealed"]
        columns, label = [str(c) for c in description["columns"]], str(description["label"])
        if not isinstance(blob, bytes) or not isinstance(description["params"], dict):
            raise TypeError("model")
    except (KeyError, TypeError):
        raise ProtocolError("predict needs the model file's description, id, wrapped MAC key and sealed "
                            "weights") from None
    algo = find_algorithm(str(description["algorithm"]))
    opened = state.dataset(dataset_id)
    opened.rule.check(None, algo.name, [*columns, label if with_label else ""], {})
    mac_key = state.broker.unwrap(wrapped, mac_context(str(description["dataset_id"])))
    weights = arrays.unpack(sealing.open_(sealing.model_key(mac_key, model_id), blob,
                                          sealing.model_aad(model_id, description)))
    X, y = _features(state, dataset_id, index, columns, label if with_label else "")
    out = {"prediction": algo.predict(weights, X, description["params"])}
    if y is not None:
        out["label"] = y
    sealed = sealing.seal(sealing.job_key(opened.mac_key, job), arrays.pack(out), sealing.predictions_aad(job, index))
    return {"predictions": sealed}
