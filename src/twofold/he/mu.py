"""MU, the master computation unit: stores encrypted uploads and models, drives training and inference.

MU holds the strong-key share lambda1 only; it reaches SU over its own mutually authenticated TLS links. It knows
models only through the plug-in registry (:mod:`twofold.he.models.base`): an upload, a training run and a query
go to the named model's MU half. Its state directory holds, per model, the owners' encrypted uploads, the trained
(encrypted) models and the training checkpoints, each as a msgpack file written atomically with mode 0600.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import ConfigError, InputError, KeyAccessError, ProtocolError, ServiceError, TwofoldError
from twofold.fsutil import make_private_dir, write_private
from twofold.he import codec, fastexp
from twofold.he.blocks import Blocks
from twofold.he.keys import SystemInfo, check_name
from twofold.he.models import base, nb
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import PEER_TIMEOUT_S, Call, Channel, LinkPool, LinkStats, client_context, connect

log = logging.getLogger("twofold.he")
# Largest frame MU reads from each role (bytes); told to parties in ``hello`` so they refuse oversize requests locally.
FRAME_LIMITS = {"admin": 1 << 20, "client": 64 << 20, "owner": 256 << 20}


class RunCancelled(ServiceError):
    """A training run stopped because the operator cancelled it or its requester went away."""


@dataclass
class Run:
    """One training run: what ``status`` shows and what ``cancel`` stops."""

    model: str
    started: float = field(default_factory=time.time)
    state: str = "running"  # running, cancelling, done, failed or cancelled
    error: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ("running", "cancelling")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "state": self.state, "started": self.started, "error": self.error,
                "progress": dict(self.progress), "seconds": time.time() - self.started}


class _FileCheckpoint(nb.Checkpoint):
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=False)

    def save(self, doc: dict[str, Any]) -> None:
        write_private(self.path, msgpack.packb(doc, use_bin_type=True))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _check_new_chunk(doc: dict[str, Any], body: dict[str, Any]) -> None:
    """An owner's next upload: under the key of its first upload, with a chunk name not seen before."""
    if doc["key"] != body["key_id"]:
        raise KeyAccessError("owner key changed since the first upload")
    if body["chunk"] in doc["chunks"]:
        raise InputError(f"chunk {body['chunk']!r} was already uploaded")


class RunProgress:
    """The progress callback of one run: publishes each step to ``status`` and the requester's heartbeats, and
    stops the run (at a step whose progress is saved) once it is cancelled or its requester has gone away."""

    def __init__(self, run: Run, call: Call) -> None:
        self.run, self.call = run, call
        self.step, self.done, self.total, self.offset = "", 0, 0, 0

    def __call__(self, step: str, done: int, total: int) -> None:
        self.step, self.done, self.total = step, self.offset + done, total
        self.run.progress = self.call.progress = {"model": self.run.model, "step": step, "done": self.done,
                                                  "total": total}
        if self.run.cancel.is_set():
            raise RunCancelled(f"training cancelled by the operator after {self.done} of {total} {step} steps; "
                               "progress is saved: rerun train to resume")
        if self.call.cancelled.is_set():
            raise RunCancelled(f"training stopped after {self.done} of {total} {step} steps: its requester went "
                               "away; progress is saved: rerun train to resume")


class MasterUnit:
    """The MU request handler (transport independent); ``su_factory`` opens a link to SU."""

    def __init__(self, info: SystemInfo, state: Path, su_address: str | None, *, threads: int = 2,
                 pool_target: int = 0, lr_pool_target: int = 0, su_factory: Any = None,
                 peer_timeout: float = PEER_TIMEOUT_S) -> None:
        self.info = info
        self.params = info.params()
        self.share = info.share("mu", self.params)
        self.system_pk = info.system_key(self.params)
        self.state = make_private_dir(Path(state))
        for sub in ("models", "checkpoints", *(m.store for m in base.REGISTRY.values())):
            make_private_dir(self.state / sub)
        self.threads = threads
        self.system_pool = PairPool(self.system_pk)
        if pool_target:
            self.system_pool.start_background(pool_target)
        self.su_address = su_address
        self.su_stats = LinkStats()
        self._t1: fastexp.T1Source | None = None
        if lr_pool_target:
            self.t1().start_background(lr_pool_target)  # Priv-LR's T1-only randomness, precomputed
        self._su_factory = su_factory
        self.peer_timeout = peer_timeout
        self._su_links = LinkPool(self._open_su_link, limit=max(2, threads + 2))
        self._run: Run | None = None
        self._run_lock = threading.Lock()  # guards only the swap of ``_run``
        self._upload_lock = threading.Lock()
        self._models: dict[str, dict[str, Any]] = {}
        self._key_pools = KeyPools()  # per owner/client key, kept across requests (tables), bounded
        self.link_stats: dict[str, LinkStats] = {}
        self._handlers = {"hello": (self._hello, ("owner", "client", "admin")),
                          "upload": (self._upload, ("owner",)), "train": (self._train, ("admin",)),
                          "status": (self._status, ("admin",)), "cancel": (self._cancel, ("admin",)),
                          "predict": (self._predict, ("client",))}

    # ------------------------------------------------------------------------------------------- plumbing

    def handle(self, kind: str, body: dict[str, Any], peer: tuple[str, str],
               call: Call | None = None) -> tuple[str, dict[str, Any]]:
        entry = self._handlers.get(kind)
        if entry is None:
            raise ProtocolError(f"MU does not serve {kind!r}")
        fn, roles = entry
        if peer[0] not in roles:
            raise KeyAccessError(f"a {peer[0]} may not send {kind}")
        if kind == "train":
            return "ok", {"result": self._train(body, call or Call())}
        return "ok", {"result": fn(body, peer)}

    def _open_su_link(self) -> Channel:
        if self._su_factory is not None:
            return self._su_factory()
        if not self.su_address:
            raise ConfigError("MU was started without --su")
        cert, key = self.info.tls_files("mu")
        ctx = client_context(self.info.ca_pem, cert, key)
        return connect(self.su_address, ctx, "su", stats=[self.su_stats], peer_timeout=self.peer_timeout)

    def close(self) -> None:
        self._su_links.close()

    def blocks(self) -> Blocks:
        return Blocks(self._su_links, self.share, self.system_pool, threads=self.threads, pools=self._key_pools)

    def t1(self) -> fastexp.T1Source:
        if self._t1 is None:
            self._t1 = fastexp.T1Source(self.system_pk)
        return self._t1

    def _registered_key(self, name: str, role: str, key: bytes) -> dtpkc.PublicKey:
        entry = self.info.registry().get(name)
        if entry is None or entry["role"] != role or bytes.fromhex(entry["pk"]) != key:
            raise KeyAccessError("ciphertexts are under a key that is not registered to this party")
        return wire.public_key_from_bytes(self.params, key)

    def _load(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        return msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)

    def _save(self, path: Path, doc: dict[str, Any]) -> None:
        write_private(path, msgpack.packb(doc, use_bin_type=True))

    def _schema(self, plugin: base.HEModel) -> Any:
        return plugin.load_schema(self.info.public)

    # ----------------------------------------------------------------------------------- MUContext

    def owner_docs(self, plugin: base.HEModel) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for path in sorted((self.state / plugin.store).glob("*.msgpack")):
            doc = self._load(path)
            if doc and doc.get("records"):
                out.append((path.stem, doc))
        return out

    def checkpoint(self, name: str) -> _FileCheckpoint:
        return _FileCheckpoint(self.state / "checkpoints" / f"{check_name(name)}.msgpack")

    def stored_model(self, name: str) -> dict[str, Any] | None:
        return self._load(self.state / "models" / f"{check_name(name)}.msgpack")

    def su_bytes(self) -> int:
        return self.su_stats.sent + self.su_stats.received

    def model(self, name: str) -> dict[str, Any]:
        if name not in self._models:
            doc = self.stored_model(name)
            if doc is None:
                raise InputError(f"model {name!r} is not trained yet: run `twofold he train --model {name}`")
            self._models[name] = doc
        return self._models[name]

    # ------------------------------------------------------------------------------------------- handlers

    def _hello(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["version"] != 1:
            raise ProtocolError(f"unsupported client version {body['version']}")
        return {"role": "mu", "bits": self.params.bits, "you": f"{peer[0]}:{peer[1]}",
                "max_frame": FRAME_LIMITS.get(peer[0], 1 << 20), "models": base.names()}

    def _upload(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        """Check an owner's chunk and hand it to the model, which adds it to the owner's stored document."""
        plugin = base.model(body["model"])
        self._registered_key(peer[1], "owner", body["key_id"])
        schema = self._schema(plugin)
        records = body["records"]
        if records < 1 or len(body["cts"]) != plugin.upload_cts(self.params, schema, records):
            raise ProtocolError(f"a {plugin.title} upload of {records} records must hold "
                                f"{plugin.upload_cts(self.params, schema, max(records, 0))} ciphertexts")
        cts = codec.cts_from_bytes(self.params, body["cts"])  # strict decoding
        prepared = plugin.prepare(self, schema, cts, records)
        path = self.state / plugin.store / f"{check_name(peer[1])}.msgpack"
        with self._upload_lock:  # one read-modify-write of the owner's state file at a time (local disk only)
            doc = self._load(path) or {"key": body["key_id"], "records": 0, "chunks": [], **plugin.new_owner()}
            _check_new_chunk(doc, body)
            plugin.absorb(self, schema, doc, cts, records, prepared)
            doc["records"] += records
            doc["chunks"].append(body["chunk"])
            self._save(path, doc)
        return {"records": doc["records"], "chunks": len(doc["chunks"])}

    def _train(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run one training at a time; it stops (progress saved) when cancelled or when its requester leaves."""
        plugin = base.model(body["model"])
        run = Run(plugin.name)
        with self._run_lock:
            if self._run is not None and self._run.active:
                raise ServiceError(f"a training run of {self._run.model} is already in progress: `twofold he "
                                   "cancel` stops it")
            self._run = run
        try:
            trained = plugin.train(self, self._schema(plugin), body, RunProgress(run, call))
        except RunCancelled as exc:
            run.state, run.error = "cancelled", str(exc)
            raise
        except TwofoldError as exc:
            run.state, run.error = "failed", str(exc)
            raise
        except BaseException as exc:
            run.state, run.error = "failed", f"internal error ({type(exc).__name__})"
            raise
        if trained["model"] is not None:
            self._save(self.state / "models" / f"{plugin.name}.msgpack", trained["model"])
            self._models[plugin.name] = trained["model"]
        run.state = "done"
        return trained["result"]

    def _cancel(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        """Ask the running training to stop at its next saved step."""
        run = self._run
        if run is None or not run.active:
            raise InputError("no training run is in progress")
        run.state = "cancelling"
        run.cancel.set()
        return {"run": run.as_dict()}

    def _status(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        owners = {m.status_key: {name: doc.get("records", 0) for name, doc in self.owner_docs(m)}
                  for m in base.REGISTRY.values()}
        models = sorted(p.stem for p in (self.state / "models").glob("*.msgpack"))
        links = {role: s.as_dict() for role, s in self.link_stats.items()}
        links["su"] = self.su_stats.as_dict()
        su: dict[str, Any] = {}
        if self.su_address or self._su_factory:
            try:
                su = self._su_links.request("su.stats", {})["result"]
            except TwofoldError as exc:  # status must work while SU is down
                su = {"error": str(exc)}
        run = self._run
        return {**owners, "models": models, "links": links, "pool": len(self.system_pool), "su": su,
                "lr_pool": len(self._t1) if self._t1 else 0, "lr_online": self._t1.made_online if self._t1 else 0,
                "run": run.as_dict() if run else None, "progress": dict(run.progress) if run else {},
                "bits": self.params.bits}

    def _predict(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        plugin = base.model(body["model"])
        pk = self._registered_key(peer[1], "client", body["key_id"])
        model = self.model(plugin.name)
        queries = [codec.cts_from_bytes(self.params, q) for q in body["queries"]]
        answers = plugin.predict(self.blocks(), model, queries, pk)
        return {"answers": [codec.ct_to_bytes(self.params, a) for a in answers]}
