"""MU and SU under concurrent load and failing peers: real `twofold he serve` processes on loopback.

Every wait here is bounded; a hang fails the test (pytest-timeout) with the stacks of all threads.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from twofold.errors import ServiceError, TwofoldError
from twofold.he import protocol
from twofold.he.client import Party, read_csv
from twofold.he.keys import load_system
from twofold.he.transport import client_context, connect

from .servers import Server, free_port, make_system, reference_predictions

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]

EXTRA_OWNERS = tuple(f"owner{i}" for i in range(6))
FAST = ("--heartbeat", "0.2", "--peer-timeout", "3")  # quick heartbeats, frozen peers found in 3 s
PEER_TIMEOUT = 3.0
LONG = 30  # Priv-LR steps of a run that is still going when the test acts on it (about 0.1 s each here)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Path:
    return make_system(tmp_path_factory.mktemp("he-load"), EXTRA_OWNERS)


def _pair(system: Path, state: Path, su_port: int = 0, mu_extra: tuple[str, ...] = ()) -> tuple[Server, Server]:
    su = Server(system, "su", su_port, FAST)
    try:
        mu = Server(system, "mu", extra=("--su", su.address, "--state", str(state), *FAST, *mu_extra))
    except BaseException:
        su.stop()
        raise
    return su, mu


@pytest.fixture(scope="module")
def servers(system):
    su, mu = _pair(system, system.parent / "mu-state")
    info = load_system(system)
    for owner in ("olga", "omar"):
        Party(info, owner, mu.address).upload(system.parent / f"{owner}.csv", "label")
    Party(info, "admin", mu.address).request("train", {"model": "nb", "chunk": 64, "iterations": 0, "fresh": False})
    yield mu, su
    mu.stop()
    su.stop()
    assert mu.proc.poll() is not None and su.proc.poll() is not None


@pytest.fixture
def pair(system, tmp_path):
    """A fresh SU and MU (own state) with olga's records uploaded for Priv-LR."""
    su, mu = _pair(system, tmp_path / "state")
    try:
        Party(load_system(system), "olga", mu.address).upload(system.parent / "olga.csv", "label", model="lr")
        yield su, mu
    finally:
        mu.stop()
        su.stop()


def _queries(system: Path, n: int) -> list[list[float]]:
    schema_rows, _ = read_csv(system.parent / "queries.csv", ["a", "b", "c", "d"], "label")
    return schema_rows[:n]


def _expected(system: Path, n: int) -> list[str]:
    root = system.parent
    refs, schema = reference_predictions(system, [root / "olga.csv", root / "omar.csv"], root / "queries.csv")
    return [schema.classes[max(range(len(r)), key=r.__getitem__)] for r in refs[:n]]


def _run_all(jobs: list, timeout: float) -> list:
    """Run the callables at once in threads; their results (or exceptions) in order; fails if one hangs."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait(30)
        try:
            results[i] = jobs[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a request is stuck"
    return results


def _train_lr(mu: Server, system: Path, iterations: int, **kwargs) -> dict:
    body = {"model": "lr", "chunk": 1, "iterations": iterations, "fresh": False}
    return Party(load_system(system), "admin", mu.address, **kwargs).request("train", body)


def _status(mu: Server, system: Path) -> dict:
    return Party(load_system(system), "admin", mu.address).request("status", {})


def _wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def _in_background(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        start = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        box["end"] = time.monotonic()
        box["seconds"] = box["end"] - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _running_step(mu: Server, system: Path) -> bool:
    run = _status(mu, system).get("run") or {}
    return run.get("model") == "lr" and run.get("state") == "running" and run.get("progress", {}).get("done", 0) >= 1


# ---------------------------------------------------------------------------------------- concurrent load


def test_twenty_concurrent_clients_get_correct_answers(system, servers):
    mu, _ = servers
    info = load_system(system)
    n = 5
    expected = _expected(system, n)
    rows = _queries(system, n)
    jobs = [lambda o=o: Party(info, o, mu.address).upload(system.parent / "olga.csv", "label", model="lr")
            for o in EXTRA_OWNERS]
    jobs += [lambda c=c: Party(info, c, mu.address).predict(rows, batch=2) for c in ("alice", "carl") * 6]
    jobs.append(lambda: Party(info, "admin", mu.address).request(
        "train", {"model": "nb", "chunk": 4, "iterations": 0, "fresh": True}))
    jobs.append(lambda: [Party(info, "admin", mu.address).request("status", {}) for _ in range(5)])
    assert len(jobs) == 20
    results = _run_all(jobs, 150)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    for upload in results[:6]:
        assert upload["records"] == 40
    for predictions in results[6:18]:
        assert predictions == expected
    assert results[18]["records"] == 70
    status = Party(info, "admin", mu.address).request("status", {})
    assert all(status["lr_owners"][o] == 40 for o in EXTRA_OWNERS)
    assert status["run"]["state"] == "done"


def test_flood_of_bad_frames_while_a_good_client_is_served(system, servers):
    mu, _ = servers
    info = load_system(system)
    host, port = mu.address.rsplit(":", 1)
    cert, key = info.tls_files("olga")
    ctx = client_context(info.ca_pem, cert, key)
    stop = threading.Event()
    counts = {"bad": 0}
    lock = threading.Lock()

    def flood(kind: int) -> None:
        for _ in range(40):
            if stop.is_set():
                return
            try:
                if kind == 0:  # not TLS at all
                    with socket.create_connection((host, int(port)), timeout=5) as raw:
                        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
                else:  # an enrolled party sending garbage or an oversize header
                    with connect(mu.address, ctx, "mu", peer_timeout=5) as channel:
                        channel.send_raw(protocol.HEADER.pack(1 << 31) if kind == 1 else b"\x00\x00\x00\x03abc")
                        channel.recv()
            except (TwofoldError, OSError, ssl.SSLError):
                pass
            with lock:
                counts["bad"] += 1

    flooders = [threading.Thread(target=flood, args=(i % 3,), daemon=True) for i in range(6)]
    for f in flooders:
        f.start()
    try:
        rows, expected = _queries(system, 3), _expected(system, 3)
        for _ in range(3):
            assert Party(info, "alice", mu.address).predict(rows, batch=3) == expected
    finally:
        stop.set()
        for f in flooders:
            f.join(30)
    assert counts["bad"] > 0
    assert mu.proc.poll() is None
    assert Party(info, "carl", mu.address).request("hello", {"version": 1})["role"] == "mu"


def test_connections_beyond_the_cap_are_closed_at_accept(system, tmp_path):
    su, mu = _pair(system, tmp_path / "state", mu_extra=("--max-connections", "3"))
    info = load_system(system)
    held = []
    try:
        held = [Party(info, "alice", mu.address).connect() for _ in range(3)]
        with pytest.raises(ServiceError, match=r"closed the connection|connection limit"):
            Party(info, "carl", mu.address).connect()
        held.pop().close()
        _wait_for(lambda: _try_hello(info, mu), 10, "a free link slot")
        for channel in held:  # the links that were kept open still work
            assert channel.request("hello", {"version": 1})["result"]["role"] == "mu"
    finally:
        for channel in held:
            channel.close()
        mu.stop()
        su.stop()


def _try_hello(info, mu: Server) -> bool:
    try:
        with Party(info, "carl", mu.address).connect():
            return True
    except ServiceError:
        return False


# ------------------------------------------------------------------------------------------ failing peers


@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "killed"])
def test_a_stuck_or_dead_su_fails_the_run_with_progress_saved(system, pair, signum):
    su, mu = pair
    thread, box = _in_background(lambda: _train_lr(mu, system, 12))
    _wait_for(lambda: _running_step(mu, system), 60, "the first completed step")
    signalled = time.monotonic()
    su.signal(signum)
    thread.join(PEER_TIMEOUT + 30)
    assert not thread.is_alive(), "MU kept waiting on a stuck SU"
    detected = box["end"] - signalled
    assert isinstance(box.get("error"), ServiceError), box
    assert "progress is saved" in str(box["error"]) and "rerun train to resume" in str(box["error"])
    assert detected < PEER_TIMEOUT + 15
    run = _status(mu, system)["run"]
    assert run["state"] == "failed" and "SU failed" in run["error"]
    if signum == signal.SIGSTOP:
        su.signal(signal.SIGCONT)
    else:
        su.proc.wait(10)
        port = int(su.address.rsplit(":", 1)[1])
        pair_su = Server(system, "su", port, FAST)
        su.__dict__.update(pair_su.__dict__)  # the fixture stops the new one
    result = _train_lr(mu, system, 12)
    assert result["resumed_at_iteration"] >= 1 and result["iterations"] == 12


def test_a_frozen_mu_is_detected_by_its_client(system, tmp_path):
    su, mu = _pair(system, tmp_path / "state")
    info = load_system(system)
    try:
        channel = Party(info, "alice", mu.address, peer_timeout=2).connect()
        mu.signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(ServiceError, match="sent nothing for 2 s"):
            channel.request("hello", {"version": 1})
        assert time.monotonic() - start < 10
        channel.close()
    finally:
        mu.stop()
        su.stop()


def test_cancel_stops_the_run_and_train_resumes(system, pair):
    _, mu = pair
    info = load_system(system)
    thread, box = _in_background(lambda: _train_lr(mu, system, LONG))
    _wait_for(lambda: _running_step(mu, system), 60, "the first completed step")
    with pytest.raises(ServiceError, match="already in progress"):
        _train_lr(mu, system, LONG)
    cancelled = Party(info, "admin", mu.address).request("cancel", {})
    assert cancelled["run"]["state"] == "cancelling"
    thread.join(60)
    assert isinstance(box.get("error"), ServiceError) and "cancelled by the operator" in str(box["error"])
    assert _status(mu, system)["run"]["state"] == "cancelled"
    with pytest.raises(TwofoldError, match="no training run is in progress"):
        Party(info, "admin", mu.address).request("cancel", {})
    result = _train_lr(mu, system, LONG)
    assert result["resumed_at_iteration"] >= 1


def test_a_client_that_goes_away_releases_the_run(system, pair):
    _, mu = pair
    info = load_system(system)
    channel = Party(info, "admin", mu.address).connect()
    channel.send("train", {"model": "lr", "chunk": 1, "iterations": LONG, "fresh": False})
    _wait_for(lambda: _running_step(mu, system), 60, "the first completed step")
    channel.close()  # the operator's process died or hit Ctrl-C
    _wait_for(lambda: _status(mu, system)["run"]["state"] == "cancelled", 30, "MU to release the run")
    assert "requester went away" in _status(mu, system)["run"]["error"]
    seen: list[dict] = []
    result = Party(info, "admin", mu.address).request(
        "train", {"model": "lr", "chunk": 1, "iterations": LONG, "fresh": False}, on_progress=seen.append)
    assert result["resumed_at_iteration"] >= 1
    assert seen and all(p.get("model") == "lr" for p in seen if p)  # heartbeats carried the progress


def test_unreachable_mu_is_a_clear_service_error(system):
    info = load_system(system)
    with pytest.raises(ServiceError, match="cannot reach MU"):
        Party(info, "alice", f"127.0.0.1:{free_port()}").connect()
