"""``twofold bench servers``: the HE servers under concurrent load, and how fast a frozen peer is found.

SU and MU run as `twofold he serve` processes on loopback TLS with their production timings (or the ones
given). One owner uploads breast_cancer's training split for Priv-NB and Priv-LR and MU trains Priv-NB. Then:

- **load**: at each level N, N clients at once send one encrypted Priv-NB query each (a fresh TLS link per
  client); every answer is decrypted and checked against the answer of the same query sent alone. The report
  gives errors, wrong answers, median and p99 latency per level, and the largest N served without error.
- **frozen peers**: SU is frozen (SIGSTOP) during a Priv-LR run, and the time until MU fails the run (with its
  progress saved) is measured; then MU is frozen while a client waits on it, and the time until the client gives
  up is measured. Both peers are thawed (SIGCONT) afterwards and the run resumes.
"""

from __future__ import annotations

import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twofold.bench.common import machine
from twofold.bench.he import Servers, _write_csv, load_dataset
from twofold.errors import ServiceError, TwofoldError

LEVELS = (1, 10, 25, 50, 64, 80)


def _at_once(jobs: list[Callable[[], Any]]) -> list[tuple[float, Any]]:
    """Run the jobs in threads started together; (seconds, result or exception) per job."""
    out: list[tuple[float, Any]] = [(0.0, None)] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait(60)
        start = time.perf_counter()
        try:
            result: Any = jobs[i]()
        except TwofoldError as exc:
            result = exc
        out[i] = (time.perf_counter() - start, result)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    return out


def _load(info: Any, mu: str, rows: list[list[float]], expected: list[str], levels: tuple[int, ...],
          log: Callable[[str], None]) -> list[dict[str, Any]]:
    from twofold.he.client import Party

    out = []
    for n in levels:
        runs = _at_once([lambda i=i: Party(info, "client", mu).predict([rows[i % len(rows)]], batch=1)
                         for i in range(n)])
        errors = [r for _, r in runs if isinstance(r, BaseException)]
        wrong = sum(1 for i, (_, r) in enumerate(runs) if not isinstance(r, BaseException)
                    and r != [expected[i % len(rows)]])
        times = sorted(t for t, r in runs if not isinstance(r, BaseException))
        row = {"concurrent": n, "errors": len(errors), "wrong": wrong,
               "error_kinds": sorted({str(e)[:120] for e in errors})[:3],
               "median_s": statistics.median(times) if times else None,
               "p99_s": times[min(len(times) - 1, int(0.99 * len(times)))] if times else None}
        log(f"  {n} concurrent queries: {len(errors)} errors, {wrong} wrong, median {row['median_s'] or 0:.2f} s")
        out.append(row)
    return out


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServiceError("the run made no progress in time")
        time.sleep(0.1)


def _frozen_su(servers: Servers, info: Any, mu: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Freeze SU after the first Priv-LR step; seconds until MU fails the run, then resume it."""
    from twofold.he.client import Party

    admin = Party(info, "admin", mu)
    box: dict[str, Any] = {}
    body = {"model": "lr", "chunk": 1, "iterations": 3, "fresh": True}

    def train() -> None:
        try:
            box["result"] = admin.request("train", body)
        except TwofoldError as exc:
            box["error"] = exc
        box["end"] = time.monotonic()

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    def first_step_done() -> bool:
        run = admin.request("status", {}).get("run") or {}
        return run.get("model") == "lr" and run.get("state") == "running" and run["progress"].get("done", 0) >= 1

    _wait(first_step_done, 1800)
    frozen = time.monotonic()
    servers.signal("su", signal.SIGSTOP)
    thread.join(600)
    servers.signal("su", signal.SIGCONT)
    detected = box.get("end", time.monotonic()) - frozen
    log(f"  frozen SU found after {detected:.1f} s: {box.get('error', 'the run did not fail')}")
    body["fresh"] = False
    resumed = admin.request("train", body)
    return {"detected_s": detected, "failed_with": str(box.get("error", "")),
            "resumed_at_iteration": resumed.get("resumed_at_iteration")}


def _frozen_mu(servers: Servers, info: Any, mu: str, peer_timeout: float) -> float:
    """Freeze MU while a client waits on it; seconds until the client gives up."""
    from twofold.he.client import Party

    channel = Party(info, "client", mu, peer_timeout=peer_timeout).connect()
    servers.signal("mu", signal.SIGSTOP)
    start = time.monotonic()
    try:
        channel.request("hello", {"version": 1})
    except ServiceError:
        pass
    finally:
        detected = time.monotonic() - start
        servers.signal("mu", signal.SIGCONT)
        channel.close()
    return detected


def run(key_bits: int = 2048, levels: tuple[int, ...] = LEVELS, heartbeat: float = 5.0, peer_timeout: float = 15.0,
        max_connections: int = 64, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    from twofold.he.client import Party
    from twofold.he.keys import enroll, init_system
    from twofold.he.models import lr
    from twofold.he.models.nb import fit_schema

    features, rows, labels = load_dataset("breast_cancer", None)
    xtr, xte, ytr, _ = train_test_split(rows, labels, test_size=0.3, random_state=0, stratify=labels)
    timing = ["--heartbeat", str(heartbeat), "--peer-timeout", str(peer_timeout), "--max-connections",
              str(max_connections), "--threads", "2"]
    with tempfile.TemporaryDirectory(prefix="twofold-bench-servers-") as tmp:
        info = init_system(Path(tmp) / "system", key_bits, allow_insecure=key_bits < 2048)
        for name, role in (("owner", "owner"), ("client", "client")):
            enroll(info, name, role)
        _write_csv(Path(tmp) / "train.csv", features, xtr, ytr, "label")
        (info.public / "schema.json").write_text(fit_schema(features, "label", xtr, ytr, 5).to_json() + "\n")
        (info.public / "lr.json").write_text(lr.fit_schema(features, "label", xtr, ytr).to_json() + "\n")
        servers = Servers(info.root, extra=timing)
        try:
            mu = servers.start()
            owner = Party(info, "owner", mu)
            for model in ("nb", "lr"):
                owner.upload(Path(tmp) / "train.csv", "label", model=model)
            Party(info, "admin", mu).request("train", {"model": "nb", "chunk": 256, "iterations": 0, "fresh": False})
            queries = xte[:8]
            expected = Party(info, "client", mu).predict(queries, batch=8)
            log("load: concurrent encrypted queries")
            load = _load(info, mu, queries, expected, levels, log)
            log("frozen peers")
            su = _frozen_su(servers, info, mu, log)
            mu_detected = _frozen_mu(servers, info, mu, peer_timeout)
            log(f"  frozen MU found by its client after {mu_detected:.1f} s")
        finally:
            servers.stop()
    clean = [row["concurrent"] for row in load if not row["errors"] and not row["wrong"]]
    return {"benchmark": "servers", "key_bits": key_bits,
            "timing": {"heartbeat_s": heartbeat, "peer_timeout_s": peer_timeout, "max_connections": max_connections},
            "load": load, "held_without_error": max(clean, default=0), "frozen_su": su,
            "frozen_mu_detected_s": mu_detected, "machine": machine()}
