"""``twofold bench he``: MU and SU as separate TLS server processes on loopback, every number measured.

Steps: split the dataset (70/30, stratified, seed 0), give each half of the training split to its own data
owner, fit the public binning on the training split, start SU and MU with ``python -m twofold he serve``, let
the owners encrypt and upload, train, then query with encrypted queries. Times are wall-clock at the caller;
bytes are counted by the transport (MU's links). ``plaintext_accuracy`` is scikit-learn's CategoricalNB on the
same binning and split for nb, LogisticRegression on the same standardized fixed-point features for lr, and
the plaintext reference tree (``dt.reference_train``, same bins and rules) for dt.
A python-paillier (``phe``) primitive comparison runs at the same key size.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twofold.bench.common import machine, timed
from twofold.errors import ConfigError, InputError, ServiceError
from twofold.services import ServiceProcess, start_he

IMPLEMENTED = ("nb", "lr", "dt")


def load_dataset(name: str, label: str | None) -> tuple[list[str], list[list[float]], list[str]]:
    if name.startswith("csv:"):
        from twofold.he.client import read_table

        if not label:
            raise ConfigError("csv: datasets need --label")
        return read_table(Path(name[4:]), label)
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
               "digits": datasets.load_digits}
    if name not in loaders:
        raise ConfigError(f"unknown dataset {name!r}: use breast_cancer, wine, digits or csv:PATH")
    data = loaders[name]()
    features = [f"f{i}" for i in range(data.data.shape[1])]
    return features, data.data.tolist(), [str(int(y)) for y in data.target]


def _write_csv(path: Path, features: list[str], rows: list[list[float]], labels: list[str], label: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*features, label])
        for row, y in zip(rows, labels, strict=True):
            writer.writerow([*row, y])


class Servers:
    """SU and MU started through the CLI (:func:`twofold.services.start_he`); stopped by the PIDs started."""

    def __init__(self, system: Path, pool: int = 0, lr_pool: dict[str, int] | None = None,
                 extra: list[str] | None = None) -> None:
        self.system = system
        self.pool = pool
        self.lr_pool = lr_pool or {}
        self.extra = extra or []
        self.services: dict[str, ServiceProcess] = {}

    def _start(self, role: str, extra: list[str]) -> str:
        service = start_he(self.system, role, 0, ("--pool", str(self.pool), "--lr-pool",
                                                  str(self.lr_pool.get(role, 0)), *self.extra, *extra),
                           log_path=self.system / f"{role}.log")
        self.services[role] = service
        return service.address

    def start(self) -> str:
        su = self._start("su", [])
        return self._start("mu", ["--su", su])

    def signal(self, role: str, signum: int) -> None:
        """Signal SU (``su``) or MU (``mu``) by the PID that started it."""
        self.services[role].signal(signum)

    def stop(self) -> None:
        for role in ("mu", "su"):
            service = self.services.pop(role, None)
            if service is not None:
                service.stop()


def _plaintext_nb(schema: Any, xtr: list, ytr: list, xte: list, yte: list) -> float:
    import numpy as np
    from sklearn.naive_bayes import CategoricalNB

    classes = schema.classes
    counts = [sum(1 for y in ytr if y == c) for c in classes]
    prior = [(n + 1) / (len(ytr) + len(classes)) for n in counts]
    model = CategoricalNB(alpha=1.0, min_categories=schema.bins, class_prior=prior)
    model.fit(np.array([schema.bin_row(r) for r in xtr]), np.array([schema.class_index(y) for y in ytr]))
    pred = model.predict(np.array([schema.bin_row(r) for r in xte]))
    return float(np.mean(pred == np.array([schema.class_index(y) for y in yte])))


def _plaintext_lr(schema: Any, xtr: list, ytr: list, xte: list, yte: list) -> float:
    """scikit-learn's LogisticRegression (defaults) on the same fixed-point standardized encoding."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def enc(rows: list) -> Any:
        return np.array([schema.encode_row(r) for r in rows], dtype=float) / 256

    model = LogisticRegression(max_iter=5000).fit(enc(xtr), [schema.class_index(y) for y in ytr])
    return float(np.mean(model.predict(enc(xte)) == np.array([schema.class_index(y) for y in yte])))


def _plaintext_dt(schema: Any, xtr: list, ytr: list, xte: list, yte: list) -> float:
    """The plaintext reference tree (same bins, candidates, Gini proxy, tournament and tie rules as Priv-DT)."""
    from twofold.he.models import dt

    tree = dt.reference_train(schema, xtr, ytr, dt.DEPTH)
    hits = sum(dt.reference_predict(schema, tree, r) == schema.class_index(y) for r, y in zip(xte, yte, strict=True))
    return hits / len(yte)


def phe_comparison(key_bits: int, ops: int = 10) -> dict[str, Any]:
    """Per-operation milliseconds of python-paillier and of DT-PKC at the same modulus size."""
    import secrets

    from twofold.crypto import dtpkc
    from twofold.he.randomness import PairPool

    out: dict[str, Any] = {"key_bits": key_bits, "ops": ops}
    try:
        from phe import paillier
    except ImportError:
        out["phe"] = "not installed"
        return out

    def per_op(fn: Callable[[], Any]) -> float:
        return timed(lambda: [fn() for _ in range(ops)])[0] / ops * 1000

    pub, priv = paillier.generate_paillier_keypair(n_length=key_bits)
    c = pub.encrypt(123456789)
    out["phe_ms"] = {"encrypt": per_op(lambda: pub.encrypt(secrets.randbelow(2**60))),
                     "decrypt": per_op(lambda: priv.decrypt(c)), "add": per_op(lambda: c + c),
                     "scalar_mul_64bit": per_op(lambda: c * secrets.randbelow(2**64))}
    params, strong = dtpkc.generate_params(key_bits)
    s1, s2 = dtpkc.split_strong_key(strong)
    user = dtpkc.generate_user_key(params)
    ct = dtpkc.encrypt(user.public, 123456789)
    pool = PairPool(user.public)
    refill = per_op(lambda: pool.refill(1))
    part = dtpkc.partial_decrypt1(s1, ct)
    out["dtpkc_ms"] = {"encrypt": per_op(lambda: dtpkc.encrypt(user.public, secrets.randbelow(2**60))),
                       "pool_pair_offline": refill,
                       "encrypt_from_pool": per_op(lambda: pool.encrypt(secrets.randbelow(2**60))),
                       "weak_decrypt": per_op(lambda: dtpkc.weak_decrypt(user.secret, ct)),
                       "strong_decrypt_crt": per_op(lambda: dtpkc.strong_decrypt(strong, ct)),
                       "psdec1": per_op(lambda: dtpkc.partial_decrypt1(s1, ct)),
                       "psdec2": per_op(lambda: dtpkc.partial_decrypt2(s2, ct, part)),
                       "add": per_op(lambda: dtpkc.add(params, ct, ct)),
                       "scalar_mul_64bit": per_op(lambda: dtpkc.scalar_mul(params, ct, secrets.randbelow(2**64)))}
    return out


def _wait_for_pools(admin: Any, pool: int, log: Callable[[str], None], lr_pool: dict[str, int] | None = None) -> float:
    """The offline phase: wait until MU's and SU's background workers have precomputed their pairs (and all of
    Priv-LR's randomness values, when asked for)."""
    start = time.perf_counter()
    lr_pool = lr_pool or {}
    if pool <= 0 and not any(lr_pool.values()):
        return 0.0
    log(f"offline phase: precomputing {pool} encryption pairs at MU and at SU"
        + (f", Priv-LR values {lr_pool.get('mu', 0)} at MU and {lr_pool.get('su', 0)} at SU" if lr_pool else ""))
    while True:
        status = admin.request("status", {})
        if status["pool"] >= pool * 0.95 and status["su"].get("pool", 0) >= pool * 0.95 \
                and status.get("lr_pool", 0) >= lr_pool.get("mu", 0) \
                and status["su"].get("lr_pool", 0) >= lr_pool.get("su", 0):
            return time.perf_counter() - start
        if time.perf_counter() - start > 900:
            raise ServiceError("pools did not fill within 15 minutes")
        time.sleep(1.0)


def _run_algorithm(algorithm: str, info: Any, mu: str, owners: list, tmp: Path, label: str, schema: Any,
                   xtr: list, ytr: list, xte: list, yte: list, max_queries: int | None, latency_queries: int,
                   offline_seconds: float, pool: int, log: Callable[[str], None],
                   lr_pool: dict[str, int] | None = None) -> dict[str, Any]:
    """Upload, train and query one algorithm against running servers."""
    from twofold.he.client import Party

    log(f"{algorithm}: owners encrypt and upload {len(xtr)} records")
    owner_seconds, owner_bytes = 0.0, 0
    for name, _, _ in owners:
        party = Party(info, name, mu)
        seconds, _ = timed(lambda p=party, n=name: p.upload(tmp / f"{n}.csv", label, model=algorithm))
        owner_seconds += seconds
        owner_bytes += party.stats.sent + party.stats.received
    log(f"{algorithm}: training")
    admin = Party(info, "admin", mu)
    body = {"model": algorithm, "chunk": 256, "iterations": 0, "fresh": True}
    before = admin.request("status", {})
    train_seconds, trained = timed(lambda: admin.request("train", body))
    after = admin.request("status", {})
    client = Party(info, "client", mu)
    queries = xte if max_queries is None else xte[:max_queries]
    truth = yte[: len(queries)]
    log(f"{algorithm}: {latency_queries} single queries, then {len(queries)} in batches")
    latencies = [timed(lambda r=r: client.predict([r], model=algorithm))[0]
                 for r in queries[:latency_queries]]
    batch_seconds, predicted = timed(lambda: client.predict(queries, model=algorithm, batch=16))
    accuracy = sum(p == y for p, y in zip(predicted, truth, strict=True)) / len(truth)
    reference = {"lr": _plaintext_lr, "dt": _plaintext_dt}.get(algorithm, _plaintext_nb)
    return {
        "algorithm": algorithm,
        "owner_encrypt_seconds": owner_seconds,
        "train_seconds": train_seconds,
        "train_seconds_at_mu": trained["seconds"],
        "infer_seconds_per_query": statistics.median(latencies),
        "batch_queries_per_s": len(queries) / batch_seconds,
        "bytes_mu_su": trained["bytes_mu_su"],
        "bytes_owner_mu": owner_bytes,
        "bytes_client_mu": client.stats.sent + client.stats.received,
        "queries": len(queries),
        "accuracy": accuracy,
        "plaintext_accuracy": reference(schema, xtr, ytr, queries, truth),
        "plaintext_accuracy_full_test": reference(schema, xtr, ytr, xte, yte),
        "plaintext_reference": {
            "lr": "scikit-learn LogisticRegression() on the same standardized fixed-point features",
            "dt": "plaintext depth-2 tree built the same way on the same bins (dt.reference_train)",
        }.get(algorithm, "scikit-learn CategoricalNB on the same bins"),
        "iterations": trained.get("iterations"),
        "depth": trained.get("depth"),
        "offline_pool_seconds": offline_seconds,
        "pool_pairs_target": pool,
        "lr_pool_values_target": lr_pool if algorithm == "lr" else None,
        "lr_values_computed_online_in_training": {
            "mu": after.get("lr_online", 0) - before.get("lr_online", 0),
            "su": after["su"].get("lr_online", 0) - before["su"].get("lr_online", 0)} if algorithm == "lr" else None,
        "records": len(xtr),
        "owners": len(owners),
    }


def run(dataset: str, label: str | None, algorithms: list[str], key_bits: int, *, bins: int = 5,
        max_queries: int | None = None, latency_queries: int = 3, pool: int = 2500,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the benchmark and return the JSON document."""
    from sklearn.model_selection import train_test_split

    from twofold.he.client import Party
    from twofold.he.keys import enroll, init_system
    from twofold.he.models import lr
    from twofold.he.models.nb import fit_schema

    unknown = [a for a in algorithms if a not in ("nb", "dt", "lr")]
    if unknown:
        raise ConfigError(f"unknown algorithm(s): {', '.join(unknown)}")
    features, rows, labels = load_dataset(dataset, label)
    label = label or "label"
    xtr, xte, ytr, yte = train_test_split(rows, labels, test_size=0.3, random_state=0, stratify=labels)
    results: list[dict[str, Any]] = []
    skipped = [a for a in algorithms if a not in IMPLEMENTED]
    with tempfile.TemporaryDirectory(prefix="twofold-bench-he-") as tmp:
        root = Path(tmp) / "system"
        info = init_system(root, key_bits, allow_insecure=key_bits < 2048)
        half = len(xtr) // 2
        owners = [("owner-a", xtr[:half], ytr[:half]), ("owner-b", xtr[half:], ytr[half:])]
        for name, part_x, part_y in owners:
            enroll(info, name, "owner")
            _write_csv(Path(tmp) / f"{name}.csv", features, part_x, part_y, label)
        enroll(info, "client", "client")
        schema = fit_schema(features, label, xtr, ytr, bins)
        (info.public / "schema.json").write_text(schema.to_json() + "\n")
        lr_schema = lr.fit_schema(features, label, xtr, ytr)
        (info.public / "lr.json").write_text(lr_schema.to_json() + "\n")
        lr_pool: dict[str, int] = {}
        if pool > 0 and "lr" in algorithms:  # the whole training run's randomness, precomputed offline
            lr_pool = dict(zip(("mu", "su"), lr.randomness_budget(info.params(), lr_schema, len(xtr), len(owners)),
                               strict=True))
        servers = Servers(root, pool, lr_pool)
        try:
            mu = servers.start()
            offline_seconds = _wait_for_pools(Party(info, "admin", mu), pool, log, lr_pool)
            for algorithm in [a for a in algorithms if a in IMPLEMENTED]:
                results.append(_run_algorithm(algorithm, info, mu, owners, Path(tmp), label,
                                              lr_schema if algorithm == "lr" else schema, xtr, ytr, xte, yte,
                                              max_queries, latency_queries, offline_seconds, pool, log,
                                              lr_pool))
            status = Party(info, "admin", mu).request("status", {})
        finally:
            servers.stop()
    if not results and skipped:
        raise InputError(f"not implemented yet: {', '.join(skipped)} (implemented: {', '.join(IMPLEMENTED)})")
    log("phe comparison")
    return {"benchmark": "he", "dataset": dataset, "key_bits": key_bits, "bins": bins,
            "split": {"train": len(xtr), "test": len(xte), "test_size": 0.3, "random_state": 0},
            "results": results, "not_implemented": skipped, "links": status["links"],
            "phe": phe_comparison(key_bits), "machine": machine(), "cpus": os.cpu_count()}
