"""The key broker's bounds (habit 14): per-address rate limits and challenge caps, bounded tables, a cap on
requests in flight, and an enclave client that never hangs and never does HTTP under its lock.

Every loop here is bounded by a count and a clock, and everything talks to loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from twofold.crypto.broker_identity import BrokerIdentity, sign_statement
from twofold.crypto.mac import mac_context
from twofold.data import EncryptedDataset
from twofold.enclave.broker_client import BrokerAddress, BrokerSession, grant_statement
from twofold.errors import ConfigError, ServiceError
from twofold.kbs.audit import AuditLog
from twofold.kbs.policy import Policy
from twofold.kbs.server import (
    ChallengeTable,
    GrantTable,
    KeyBroker,
    Limits,
    TokenBuckets,
    _Challenge,
    _Grant,
    client_address,
    make_app,
)
from twofold.services import ServiceProcess

from .conftest import Broker

pytestmark = pytest.mark.service  # repeated in CI: races show only sometimes

FLOODER = "127.0.0.2"
AUTH_BODY = json.dumps({"backend": "simulation"}).encode()


def _mac_item(dataset) -> tuple[str, bytes]:
    return dataset.manifest.wrapped_mac_key, mac_context(dataset.dataset_id)


def _health(url: str) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/v1/health")
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class _Flooder:
    """Asks for challenges from 127.0.0.2 over one keep-alive connection; counts the answers."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, source_address=(FLOODER, 0), timeout=5)
        self.statuses: Counter[int] = Counter()
        self.refusals: list[tuple[str | None, dict]] = []

    def ask(self) -> int:
        self.connection.request("POST", "/v1/auth", body=AUTH_BODY, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        body = json.loads(response.read())
        self.statuses[response.status] += 1
        if response.status == 429 and len(self.refusals) < 10:
            self.refusals.append((response.getheader("Retry-After"), body))
        return response.status


class LimitedBroker(Broker):
    """The conftest broker, started from the CLI with extra limit flags."""

    def __init__(self, keystore, workdir, datasets, flags: list[str]) -> None:
        self.flags = flags
        super().__init__(keystore, workdir, datasets)

    def start(self, port: int = 0) -> None:
        self.process = ServiceProcess("key broker", [
            "kbs", "serve", "--keystore", str(self.keystore.directory), "--policy", str(self.policy_path),
            "--audit-log", str(self.audit_path), "--host", "127.0.0.1", "--port", str(port), *self.flags,
        ], log_path=self.workdir / "kbs.log")


@pytest.fixture
def limited_broker(home, keystore, datasets, tmp_path):
    started: list[Broker] = []

    def start(*flags: str) -> Broker:
        work = tmp_path / f"limited{len(started)}"
        work.mkdir()
        started.append(LimitedBroker(keystore, work, [datasets["allowed"]], list(flags)))
        return started[-1]

    yield start
    for made in started:
        made.process.stop()


# -- (a) many enclaves at once ----------------------------------------------------------------------------------


def test_fifty_enclaves_attest_at_once_and_open_the_dataset(broker, datasets, keystore):
    path = datasets["allowed"].path
    expected = EncryptedDataset.open(path, keystore).read_table()
    start = threading.Barrier(50, timeout=30)

    def one(_: int):
        session = broker.session()
        start.wait()
        session.attest()
        return EncryptedDataset.open(path, session).read_table(), session.attestations

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50), timeout=60))
    assert all(table.equals(expected) for table, _ in results)
    assert [count for _, count in results] == [1] * 50
    assert sum(1 for e in broker.audit() if e["event"] == "grant" and e["action"] == "attest") == 50
    assert _health(broker.url)["rate_limited"] == 0  # the default burst covers 50 enclaves from one address


# -- (b) a flood from one address does not lock the others out --------------------------------------------------


def test_flood_from_one_address_is_rate_limited_while_an_enclave_attests(broker, datasets, keystore):
    cap = _health(broker.url)["pending_per_address_cap"]
    item = _mac_item(datasets["allowed"])
    flooders = [_Flooder(broker.port) for _ in range(2)]
    stop, heaviest, errors = threading.Event(), [], []

    def flood(flooder: _Flooder) -> None:
        try:
            for _ in range(20_000):
                if stop.is_set():
                    return
                flooder.ask()
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=flood, args=(f,), daemon=True) for f in flooders]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 15
        while sum(f.statuses[429] for f in flooders) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        session = broker.session()  # from 127.0.0.1, during the flood
        session.attest()
        assert session.unwrap(*item) == keystore.unwrap(*item)
        assert EncryptedDataset.open(datasets["allowed"].path, session).num_rows == 4
        while sum(f.statuses[200] for f in flooders) <= cap + 50 and time.monotonic() < deadline:
            heaviest.append(_health(broker.url)["pending_challenges_heaviest_address"])
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    granted, refused = sum(f.statuses[200] for f in flooders), sum(f.statuses[429] for f in flooders)
    assert refused > 0 and granted > cap, (granted, refused)
    retry_after, body = flooders[0].refusals[0] if flooders[0].refusals else flooders[1].refusals[0]
    assert int(retry_after) >= 1 and "too many" in body["error"] and 0 < body["retry_after"] <= 1
    health = _health(broker.url)
    assert max(heaviest, default=0) <= cap and health["pending_challenges_heaviest_address"] == cap
    assert health["pending_challenges"] == cap and health["rate_limited"] >= refused
    assert session.attestations == 1


def test_full_table_still_admits_an_attestation_from_another_address(limited_broker, datasets, keystore):
    broker = limited_broker("--max-pending", "32", "--auth-burst", "400")
    item = _mac_item(datasets["allowed"])
    flooder = _Flooder(broker.port)
    assert [flooder.ask() for _ in range(40)] == [200] * 40  # the whole table is the flooder's now
    honest = broker.session()
    inner = honest._evidence_for

    def evidence_during_a_flood(nonce: str, public: bytes, config: str):
        for _ in range(64):  # the flooder refills the table while this challenge is pending
            flooder.ask()
        return inner(nonce, public, config)

    honest._evidence_for = evidence_during_a_flood
    honest.attest()
    assert honest.unwrap(*item) == keystore.unwrap(*item)
    health = _health(broker.url)
    assert flooder.statuses == {200: 104}
    assert health["pending_challenges"] == 31 and health["pending_challenges_heaviest_address"] == 31


# -- (c) the bounded tables, without a process -----------------------------------------------------------------


def _challenge(address: str, expires: float = 1e12) -> _Challenge:
    return _Challenge("nonce", "simulation", expires, address)


def test_per_address_cap_evicts_that_address_oldest():
    table = ChallengeTable(max_pending=100, per_address=3)
    for i in range(5):
        table.add(f"a{i}", _challenge("a"), now=0.0)
    table.add("b0", _challenge("b"), now=0.0)
    assert len(table) == 4 and table.heaviest() == 3
    assert table.pop("a0") is None and table.pop("a1") is None
    assert table.pop("a2") is not None and table.pop("b0") is not None
    assert table.pop("a2") is None  # single use


def test_full_table_evicts_the_oldest_of_the_heaviest_address():
    table = ChallengeTable(max_pending=4, per_address=4)
    for i in range(3):
        table.add(f"a{i}", _challenge("a"), now=0.0)
    table.add("b0", _challenge("b"), now=0.0)  # an attestation in progress from another address
    for i in range(3, 103):
        table.add(f"a{i}", _challenge("a"), now=0.0)
    assert len(table) == 4 and table.heaviest() == 3
    assert table.pop("b0") is not None and table.pop("a102") is not None and table.pop("a99") is None
    table.add("c0", _challenge("c"), now=0.0)
    table.add("c1", _challenge("c"), now=0.0)
    table.add("d0", _challenge("d"), now=0.0)  # full: a and c hold 2 each; the tie goes to a (older)
    assert table.pop("a100") is None and table.pop("c0") is not None


def test_expired_challenges_leave_the_table_and_their_address():
    table = ChallengeTable(max_pending=10, per_address=10)
    table.add("old", _challenge("a", expires=1.0), now=0.0)
    table.add("new", _challenge("b", expires=5.0), now=0.0)
    table.expire(now=2.0)
    assert len(table) == 1 and table.pop("old") is None and table.heaviest() == 1
    table.expire(now=6.0)
    assert len(table) == 0 and table.heaviest() == 0


def test_token_bucket_limits_an_address_and_drops_idle_buckets():
    buckets = TokenBuckets(burst=3, rate=10.0, max_addresses=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(0.1)
    assert buckets.take("b", 0.0) == 0.0  # another address has its own bucket
    assert buckets.take("a", 0.1) == 0.0
    assert buckets.take("c", 0.1) == 0.0 and len(buckets) <= 2  # bounded: the least recently used went
    assert buckets.take("d", 100.0) == 0.0 and len(buckets) == 1  # the idle, refilled buckets were dropped


def test_grant_table_is_bounded_and_forgets_expired_tokens():
    public = X25519PrivateKey.generate().public_key()
    grants = GrantTable(max_grants=2)
    for i in range(3):
        grants.add(f"t{i}", _Grant("m", public, expires=100.0), now=0.0)
    assert len(grants) == 2 and grants.get("t0", 0.0) is None and grants.get("t2", 0.0) is not None
    assert grants.get("t1", 101.0) is None and len(grants) == 1
    grants.add("t3", _Grant("m", public, expires=300.0), now=200.0)  # the expired t2 goes first
    assert len(grants) == 1 and grants.get("t3", 200.0) is not None


def test_limits_key_ipv6_by_prefix_and_reject_nonsense():
    assert client_address("2001:db8::1") == client_address("2001:db8::ffff") == "2001:db8::/64"
    assert client_address("::ffff:10.0.0.1") == "10.0.0.1" and client_address("127.0.0.2") == "127.0.0.2"
    with pytest.raises(ConfigError):
        Limits(auth_rate=0)


def test_requests_in_flight_are_capped_and_slow_bodies_time_out(keystore, tmp_path):
    policy = Policy(allow_simulation=True, simulation_platform_keys=frozenset())
    broker = KeyBroker(keystore, policy, AuditLog(tmp_path / "audit.jsonl"),
                       Limits(max_in_flight=1, body_timeout_s=0.5))

    async def scenario() -> tuple[bytes, bytes, bytes]:
        runner = web.AppRunner(make_app(broker), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
            slow.write(b"POST /v1/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")  # the rest of the body never comes
            await slow.drain()
            for _ in range(100):  # until the slow request is in flight
                if broker.in_flight:
                    break
                await asyncio.sleep(0.01)
            busy = await _raw_auth(port)
            timed_out = await asyncio.wait_for(slow_reader.read(4096), 5)
            slow.close()
            return busy, timed_out, await _raw_auth(port)
        finally:
            await runner.cleanup()

    busy, timed_out, after = asyncio.run(scenario())
    assert busy.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in busy
    assert timed_out.startswith(b"HTTP/1.1 408")
    assert after.startswith(b"HTTP/1.1 200") and broker.in_flight == 0


async def _raw_auth(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(AUTH_BODY), AUTH_BODY))
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


# -- (d) the enclave's client: retries, deadlines, no HTTP under its lock --------------------------------------


def _fake_evidence(nonce: str, public: bytes, config: str) -> SimpleNamespace:
    return SimpleNamespace(to_dict=lambda: {"nonce": nonce})


SIGNING = Ed25519PrivateKey.generate()
OWNER = X25519PrivateKey.generate().public_key().public_bytes_raw()
IDENTITY = BrokerIdentity("ks-0123456789abcdef", SIGNING.public_key().public_bytes_raw(), OWNER)


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, JSON, headers) of the server's script for that path."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        script = self.server.script  # type: ignore[attr-defined]
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        status, body, headers = script[self.path].pop(0) if len(script[self.path]) > 1 else script[self.path][0]
        data = json.dumps(body(request) if callable(body) else body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_server():
    servers = []

    def start(script: dict[str, list]) -> tuple[str, list[str]]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        server.script, server.seen = script, []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def GRANT(request: dict) -> dict:
    """The grant a broker with IDENTITY would sign for this attest request (nonce "n", measurement "00"*32)."""
    token = "t" * 64
    signed = grant_statement("n", base64.b64decode(request["public_key"]), token, IDENTITY.keystore_id, OWNER,
                             "00" * 32)
    return {"token": token, "keystore_id": IDENTITY.keystore_id, "expires_in": 60,
            "owner_public_key": base64.b64encode(OWNER).decode(),
            "signature": sign_statement(SIGNING, "grant", signed)}
BUSY = (429, {"error": "too many challenges", "retry_after": 0.05}, {"Retry-After": "1"})


def test_client_waits_out_429_then_attests(scripted_server):
    url, seen = scripted_server({"/v1/auth": [BUSY, BUSY, (200, {"session": "s", "nonce": "n"}, {})],
                                 "/v1/attest": [(200, GRANT, {})]})
    session = BrokerSession(url, "00" * 32, _fake_evidence, IDENTITY, timeout_s=5)
    began = time.monotonic()
    session.attest()
    elapsed = time.monotonic() - began
    assert seen == ["/v1/auth", "/v1/auth", "/v1/auth", "/v1/attest"] and session.attestations == 1
    assert 0.1 <= elapsed < 3  # waited (the reply's fractional wait), and well below the 5 s deadline


def test_client_gives_up_on_endless_429(scripted_server):
    url, seen = scripted_server({"/v1/auth": [BUSY]})
    with pytest.raises(ServiceError, match="after 3 tries"):
        BrokerSession(url, "00" * 32, _fake_evidence, IDENTITY, timeout_s=5, max_tries=3).attest()
    assert len(seen) == 3
    url, seen = scripted_server({"/v1/auth": [(429, {"error": "slow down", "retry_after": 30}, {})]})
    began = time.monotonic()
    with pytest.raises(ServiceError, match="past this request's deadline"):
        BrokerSession(url, "00" * 32, _fake_evidence, IDENTITY, timeout_s=5).attest()
    assert time.monotonic() - began < 3 and len(seen) == 1


def _silent_listener() -> socket.socket:
    """A listening socket nobody accepts on: the kernel completes connections that then hear nothing."""
    return socket.create_server(("127.0.0.1", 0), backlog=8)


def test_client_fails_within_its_deadline_when_the_broker_never_answers():
    with _silent_listener() as listener:
        session = BrokerSession(f"http://127.0.0.1:{listener.getsockname()[1]}", "00" * 32, _fake_evidence,
                                IDENTITY, timeout_s=1.0)
        began = time.monotonic()
        with pytest.raises(ServiceError, match="deadline"):
            session.attest()
        assert 0.9 <= time.monotonic() - began < 2.5


def test_client_deadline_holds_against_a_trickling_reply():
    stop = threading.Event()

    def trickle(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(100):  # one byte every 0.1 s: each read is quick, the whole reply is not
                if stop.wait(0.1):
                    return
                connection.sendall(b" ")

    with _silent_listener() as listener:
        server = threading.Thread(target=trickle, args=(listener,), daemon=True)
        server.start()
        session = BrokerSession(f"http://127.0.0.1:{listener.getsockname()[1]}", "00" * 32, _fake_evidence,
                                IDENTITY, timeout_s=1.0)
        began = time.monotonic()
        try:
            with pytest.raises(ServiceError, match="deadline"):
                session.attest()
            assert time.monotonic() - began < 2.5
        finally:
            stop.set()
            server.join(5)


def test_concurrent_unwraps_share_one_attestation(broker, datasets, keystore):
    item = _mac_item(datasets["allowed"])
    session = broker.session()
    start = threading.Barrier(8, timeout=30)

    def one(_: int) -> bytes:
        start.wait()
        return session.unwrap(*item)

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(one, range(8), timeout=60))
    assert keys == [keystore.unwrap(*item)] * 8
    assert session.attestations == 1
    assert sum(1 for e in broker.audit() if e["event"] == "grant" and e["action"] == "attest") == 1


def test_an_attestation_in_progress_does_not_block_unwraps(broker, datasets, keystore):
    item = _mac_item(datasets["allowed"])
    session = broker.session()
    session.attest()
    inner, entered, release = session._evidence_for, threading.Event(), threading.Event()

    def slow_evidence(nonce: str, public: bytes, config: str):
        entered.set()
        release.wait(10)
        return inner(nonce, public, config)

    session._evidence_for = slow_evidence
    second = threading.Thread(target=session.attest, daemon=True)
    second.start()
    try:
        assert entered.wait(10)
        assert session.unwrap(*item) == keystore.unwrap(*item)  # with the old token, while attesting
        assert second.is_alive()
    finally:
        release.set()
        second.join(10)
    assert session.attestations == 2


def test_whole_mode_session_is_not_made_under_the_module_lock(monkeypatch):
    from twofold.spark import whole

    entered, release = threading.Event(), threading.Event()

    class SlowForOneUrl:
        def __init__(self, url: str, *args: object, **kwargs: object) -> None:
            self.url = url

        def attest(self) -> None:
            if self.url == "http://slow":
                entered.set()
                release.wait(10)

    monkeypatch.setattr(whole, "BrokerSession", SlowForOneUrl)
    monkeypatch.setattr(whole, "whole_measurement", lambda: "00" * 32)
    monkeypatch.setattr(whole, "load_or_create_platform_key", X25519PrivateKey.generate)
    monkeypatch.setattr(whole, "SimulationAttester", lambda key: None)
    monkeypatch.setattr(whole, "_sessions", {})
    slow_broker, fast_broker = (BrokerAddress(url, IDENTITY.to_json()) for url in ("http://slow", "http://fast"))
    slow = threading.Thread(target=whole.attested_session, args=(slow_broker,), daemon=True)
    slow.start()
    try:
        assert entered.wait(10)
        fast = whole.attested_session(fast_broker)  # would wait on the lock if attesting held it
        assert fast.url == "http://fast" and slow.is_alive()
    finally:
        release.set()
        slow.join(10)
    assert whole.attested_session(slow_broker).url == "http://slow"
