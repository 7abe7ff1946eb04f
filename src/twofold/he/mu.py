"""MU, the master computation unit: stores encrypted uploads and models, drives training and inference.

MU holds the strong-key share lambda1 only; it reaches SU over its own mutually authenticated TLS link. Its
state directory holds the owners' encrypted count aggregates, trained (encrypted) models and the training
checkpoint, each as a msgpack file written atomically with mode 0600.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from twofold.crypto import dtpkc
from twofold.errors import ConfigError, InputError, KeyAccessError, ProtocolError, ServiceError, TwofoldError
from twofold.fsutil import make_private_dir, write_private
from twofold.he import codec, fastexp
from twofold.he.blocks import Blocks
from twofold.he.keys import SystemInfo, check_name
from twofold.he.models import dt, lr, nb
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import PEER_TIMEOUT_S, Call, Channel, LinkPool, LinkStats, client_context, connect

log = logging.getLogger("twofold.he")
MODELS = ("nb", "lr", "dt")
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


def load_schema(info: SystemInfo) -> nb.Schema:
    path = info.public / "schema.json"
    if not path.exists():
        raise ConfigError(f"no public schema at {path}: run `twofold he schema` first")
    import json

    return nb.Schema.from_dict(json.loads(path.read_text()))


def load_lr_schema(info: SystemInfo) -> lr.LRSchema:
    path = info.public / "lr.json"
    if not path.exists():
        raise ConfigError(f"no public standardization at {path}: run `twofold he schema` first")
    import json

    return lr.LRSchema.from_dict(json.loads(path.read_text()))


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


def _lr_fingerprint(owners: list[lr.OwnerData], weights: list[bytes] | None, iterations: int) -> str:
    """Identifies one Priv-LR run: the stored records and statistics, the starting weights and the step count."""
    digest = hashlib.sha256(f"lr-run-v1:{iterations}:{len(owners)}".encode())
    for owner in owners:
        digest.update(dtpkc.public_key_to_bytes(owner.pk))
        digest.update(owner.records.to_bytes(8, "big"))
        for blob in [*owner.x, *owner.stats]:
            digest.update(len(blob).to_bytes(4, "big") + blob)
    for blob in weights or []:
        digest.update(b"w" + len(blob).to_bytes(4, "big") + blob)
    return digest.hexdigest()


class Progress:
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


def _interrupted(exc: ServiceError, what: str, saved: str) -> ServiceError:
    """The error of a run that SU (or a cancellation) interrupted."""
    if isinstance(exc, RunCancelled):
        return exc
    return ServiceError(f"SU failed during {what} ({exc}); {saved}: rerun train to resume")


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
        for sub in ("owners", "lr-owners", "dt-owners", "models", "checkpoints"):
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
        return dtpkc.public_key_from_bytes(self.params, key)

    def _owner_path(self, name: str) -> Path:
        return self.state / "owners" / f"{check_name(name)}.msgpack"

    def _load(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        return msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)

    def _save(self, path: Path, doc: dict[str, Any]) -> None:
        write_private(path, msgpack.packb(doc, use_bin_type=True))

    def model(self, name: str) -> dict[str, Any]:
        if name not in self._models:
            doc = self._load(self.state / "models" / f"{name}.msgpack")
            if doc is None:
                raise InputError(f"model {name!r} is not trained yet: run `twofold he train --model {name}`")
            self._models[name] = doc
        return self._models[name]

    # ------------------------------------------------------------------------------------------- handlers

    def _hello(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["version"] != 1:
            raise ProtocolError(f"unsupported client version {body['version']}")
        return {"role": "mu", "bits": self.params.bits, "you": f"{peer[0]}:{peer[1]}",
                "max_frame": FRAME_LIMITS.get(peer[0], 1 << 20)}

    def _upload(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["model"] not in MODELS:
            raise InputError(f"unknown model {body['model']!r}")
        self._registered_key(peer[1], "owner", body["key_id"])
        if body["model"] == "lr":
            return self._upload_lr(body, peer)
        if body["model"] == "dt":
            return self._upload_dt(body, peer)
        lay = nb.layout_for(self.params, load_schema(self.info))
        records = body["records"]
        if records < 1 or len(body["cts"]) != records * lay.cts_per_record:
            raise ProtocolError("upload does not hold records x ciphertexts-per-record ciphertexts")
        cts = codec.cts_from_bytes(self.params, body["cts"])
        with self._upload_lock:
            path = self._owner_path(peer[1])
            doc = self._load(path) or {"key": body["key_id"], "records": 0, "chunks": [], "agg": None}
            _check_new_chunk(doc, body)
            total = sum((self._load(p) or {}).get("records", 0) for p in (self.state / "owners").glob("*.msgpack"))
            if total + records >= 1 << nb.COUNT_BITS:
                raise InputError("too many training records for the count layout")
            agg = codec.cts_from_bytes(self.params, doc["agg"]) if doc["agg"] else None
            for r in range(records):
                rec = cts[r * lay.cts_per_record : (r + 1) * lay.cts_per_record]
                agg = rec if agg is None else [dtpkc.add(self.params, a, b) for a, b in zip(agg, rec, strict=True)]
            doc["agg"] = [codec.ct_to_bytes(self.params, c) for c in agg]  # type: ignore[union-attr]
            doc["records"] += records
            doc["chunks"].append(body["chunk"])
            self._save(path, doc)
        return {"records": doc["records"], "chunks": len(doc["chunks"])}

    def _upload_lr(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        """Keep each record's feature ciphertexts; add its label statistics into the owner's aggregate."""
        lay = lr.layout_for(self.params, load_lr_schema(self.info))
        records = body["records"]
        if records < 1 or len(body["cts"]) != records * lay.cts_per_record:
            raise ProtocolError("upload does not hold records x ciphertexts-per-record ciphertexts")
        cts = codec.cts_from_bytes(self.params, body["cts"])
        per = lay.cts_per_record
        # MU's PSDec1 of each record ciphertext, computed once here and reused by every training run (lr.Session)
        partials = lr.upload_partials(self.share, [c for r in range(records) for c in cts[r * per:r * per + lay.a_cts]],
                                      self.threads)
        with self._upload_lock:
            path = self.state / "lr-owners" / f"{check_name(peer[1])}.msgpack"
            doc = self._load(path) or {"key": body["key_id"], "records": 0, "chunks": [], "x": [], "xp": [],
                                       "stats": None}
            _check_new_chunk(doc, body)
            if doc["records"] + records >= 1 << lr.COUNT_BITS:
                raise InputError("too many training records for the statistics layout")
            agg = codec.cts_from_bytes(self.params, doc["stats"]) if doc["stats"] else None
            if "xp" in doc and len(doc["xp"]) == len(doc["x"]):
                doc["xp"] += partials
            for r in range(records):
                rec = cts[r * lay.cts_per_record : (r + 1) * lay.cts_per_record]
                doc["x"] += [codec.ct_to_bytes(self.params, c) for c in rec[: lay.a_cts]]
                st = rec[lay.a_cts :]
                agg = st if agg is None else [dtpkc.add(self.params, a, b) for a, b in zip(agg, st, strict=True)]
            doc["stats"] = [codec.ct_to_bytes(self.params, c) for c in agg]  # type: ignore[union-attr]
            doc["records"] += records
            doc["chunks"].append(body["chunk"])
            self._save(path, doc)
        return {"records": doc["records"], "chunks": len(doc["chunks"])}

    def _upload_dt(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        """Keep each chunk's count vectors and feature columns (Priv-DT needs per-record data, not sums)."""
        lay = nb.layout_for(self.params, load_schema(self.info))
        layout = f"columns:{lay.cts_per_record}:{lay.q_slots}:{lay.features}"
        records = body["records"]
        if records < 1 or len(body["cts"]) != dt.chunk_cts(lay, records):
            raise ProtocolError("upload does not hold records x count ciphertexts plus the feature columns")
        codec.cts_from_bytes(self.params, body["cts"])  # strict decoding
        with self._upload_lock:
            path = self.state / "dt-owners" / f"{check_name(peer[1])}.msgpack"
            doc = self._load(path) or {"key": body["key_id"], "records": 0, "chunks": [], "cts": [], "sizes": [],
                                       "layout": layout}
            _check_new_chunk(doc, body)
            if doc.get("layout") != layout:
                raise InputError("stored records do not match the schema or layout: the owner must upload again")
            doc["cts"] += list(body["cts"])
            doc["sizes"].append(records)
            doc["records"] += records
            doc["chunks"].append(body["chunk"])
            self._save(path, doc)
        return {"records": doc["records"], "chunks": len(doc["chunks"])}

    def _train_dt(self, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        lay = nb.layout_for(self.params, load_schema(self.info))
        owners = []
        for path in sorted((self.state / "dt-owners").glob("*.msgpack")):
            doc = self._load(path)
            if not doc or not doc["records"]:
                continue
            if "sizes" not in doc:
                raise InputError(f"stored Priv-DT records of {path.stem} predate the column layout: upload again")
            cts = codec.cts_from_bytes(self.params, doc["cts"])
            cells, bins, at = [], [], 0
            for size in doc["sizes"]:
                n = dt.chunk_cts(lay, size)
                rec, cols = dt.split_chunk(lay, cts[at:at + n], size)
                cells += rec
                bins.append((size, cols))
                at += n
            owners.append(dt.OwnerRecords(dtpkc.public_key_from_bytes(self.params, doc["key"]), cells, bins))
        before = self.su_stats.sent + self.su_stats.received
        start = time.perf_counter()

        # A checkpoint of an interrupted training over exactly these records is resumed; otherwise a stored model
        # is updated with the records it does not hold yet (unless ``fresh``); otherwise the tree is trained.
        schema = load_schema(self.info)
        checkpoint = _FileCheckpoint(self.state / "checkpoints" / "dt.msgpack")
        prev = self._load(self.state / "models" / "dt.msgpack")
        resume = dt.resumable_depth(checkpoint.load(), schema, owners, self.params, body["iterations"])
        plan, reason = None, ""
        if prev is not None and resume is None:
            if body["fresh"]:
                reason = "--fresh"
            else:
                plan = dt.plan_update(self.params, schema, prev, owners, body["iterations"])
                reason, plan = (plan.reason, None) if plan.reason else ("", plan)
        result = {"model": "dt", "owners": len(owners), "reason": reason}
        if plan is not None:
            if not plan.new:
                return {**result, "mode": "unchanged", "records": prev["records"], "new_records": 0, "resumed": False,
                        "seconds": time.perf_counter() - start, "depth": prev["depth"], "bytes_mu_su": 0}
            try:
                model = dt.update(self.blocks(), schema, prev, owners, plan=plan, progress=progress)
            except ServiceError as exc:
                raise _interrupted(exc, "the update", "the stored model is unchanged") from None
            result |= {"mode": "update", "new_records": plan.new_records}
        else:
            depth = body["iterations"] or resume or (prev["depth"] if prev else dt.DEPTH)
            try:
                model = dt.train(self.blocks(), schema, owners, depth, progress=progress, checkpoint=checkpoint)
            except ServiceError as exc:
                done = progress.done if progress.step == "level" else 0
                raise _interrupted(exc, "training", f"progress is saved ({done} of {depth} levels)") from None
            result |= {"mode": "full", "new_records": model["records"]}
        self._save(self.state / "models" / "dt.msgpack", model)
        self._models["dt"] = model
        return {**result, "records": model["records"], "resumed": model["resumed"],
                "seconds": time.perf_counter() - start, "depth": model["depth"],
                "bytes_mu_su": self.su_stats.sent + self.su_stats.received - before}

    def _lr_owners(self) -> list[lr.OwnerData]:
        out = []
        for path in sorted((self.state / "lr-owners").glob("*.msgpack")):
            doc = self._load(path)
            if doc and doc["records"]:
                out.append(lr.OwnerData(dtpkc.public_key_from_bytes(self.params, doc["key"]), doc["records"],
                                        doc["x"], doc["stats"], doc.get("xp")))
        return out

    def _train_lr(self, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        owners = self._lr_owners()
        prev = None if body["fresh"] else self._load(self.state / "models" / "lr.msgpack")
        target = body["iterations"] or lr.ITERATIONS
        # A run interrupted by SU resumes from its last completed step, if it was the same run: same records,
        # same starting weights, same number of steps. Anything else discards the checkpoint.
        checkpoint = _FileCheckpoint(self.state / "checkpoints" / "lr.msgpack")
        fingerprint = _lr_fingerprint(owners, prev["w"] if prev else None, target)
        saved = checkpoint.load()
        if saved and saved.get("fingerprint") == fingerprint and 0 < saved["done"] < target:
            done_before, weights = saved["done"], saved["w"]
        else:
            checkpoint.clear()
            done_before, weights = 0, (prev["w"] if prev else None)
        before = self.su_stats.sent + self.su_stats.received
        start = time.perf_counter()

        progress.offset = done_before

        def on_step(done: int, w: list[bytes]) -> None:
            checkpoint.save({"fingerprint": fingerprint, "done": done_before + done, "w": w})

        try:
            model = lr.train(self.blocks(), self.t1(), load_lr_schema(self.info), owners, weights,
                             target - done_before, progress=progress, on_step=on_step)
        except ServiceError as exc:
            done = (checkpoint.load() or {}).get("done", 0)
            raise _interrupted(exc, "training", f"progress is saved ({done} of {target} iterations)") from None
        model["iterations"] = target + (prev.get("iterations", 0) if prev else 0)
        model["resumed"] = bool(prev) or done_before > 0
        self._save(self.state / "models" / "lr.msgpack", model)
        checkpoint.clear()
        self._models["lr"] = model
        return {"model": "lr", "records": model["records"], "owners": len(owners), "resumed": model["resumed"],
                "resumed_at_iteration": done_before, "seconds": time.perf_counter() - start,
                "iterations": model["iterations"], "bytes_mu_su": self.su_stats.sent + self.su_stats.received - before}

    def _owners(self) -> tuple[list[tuple[dtpkc.PublicKey, list[bytes]]], int]:
        owners, records = [], 0
        for path in sorted((self.state / "owners").glob("*.msgpack")):
            doc = self._load(path)
            if doc and doc["agg"]:
                owners.append((dtpkc.public_key_from_bytes(self.params, doc["key"]), doc["agg"]))
                records += doc["records"]
        return owners, records

    def _train_nb(self, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        schema = load_schema(self.info)
        owners, records = self._owners()
        checkpoint = _FileCheckpoint(self.state / "checkpoints" / "nb.msgpack")
        before = self.su_stats.sent + self.su_stats.received
        start = time.perf_counter()
        try:
            model = nb.train(self.blocks(), schema, owners, checkpoint, chunk=body["chunk"] or 256, progress=progress)
        except ServiceError as exc:
            raise _interrupted(exc, "training", f"progress is saved ({progress.done} of {progress.total or '?'} "
                                                "table entries)") from None
        model["records"] = records
        self._save(self.state / "models" / "nb.msgpack", model)
        self._models["nb"] = model
        return {"model": "nb", "records": records, "owners": len(owners), "resumed": model["resumed"],
                "seconds": time.perf_counter() - start,
                "bytes_mu_su": self.su_stats.sent + self.su_stats.received - before}

    def _train(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run one training at a time; it stops (progress saved) when cancelled or when its requester leaves."""
        if body["model"] not in MODELS:
            raise InputError(f"unknown model {body['model']!r}")
        run = Run(body["model"])
        with self._run_lock:
            if self._run is not None and self._run.active:
                raise ServiceError(f"a training run of {self._run.model} is already in progress: `twofold he "
                                   "cancel` stops it")
            self._run = run
        train = {"nb": self._train_nb, "lr": self._train_lr, "dt": self._train_dt}[body["model"]]
        try:
            result = train(body, Progress(run, call))
        except RunCancelled as exc:
            run.state, run.error = "cancelled", str(exc)
            raise
        except TwofoldError as exc:
            run.state, run.error = "failed", str(exc)
            raise
        except BaseException as exc:
            run.state, run.error = "failed", f"internal error ({type(exc).__name__})"
            raise
        run.state = "done"
        return result

    def _cancel(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        """Ask the running training to stop at its next saved step."""
        run = self._run
        if run is None or not run.active:
            raise InputError("no training run is in progress")
        run.state = "cancelling"
        run.cancel.set()
        return {"run": run.as_dict()}

    def _status(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        owners, lr_owners, dt_owners = {}, {}, {}
        for path in sorted((self.state / "owners").glob("*.msgpack")):
            doc = self._load(path) or {}
            owners[path.stem] = doc.get("records", 0)
        for path in sorted((self.state / "lr-owners").glob("*.msgpack")):
            doc = self._load(path) or {}
            lr_owners[path.stem] = doc.get("records", 0)
        for path in sorted((self.state / "dt-owners").glob("*.msgpack")):
            dt_owners[path.stem] = (self._load(path) or {}).get("records", 0)
        models = sorted(p.stem for p in (self.state / "models").glob("*.msgpack"))
        links = {role: s.as_dict() for role, s in self.link_stats.items()}
        links["su"] = self.su_stats.as_dict()
        su: dict[str, Any] = {}
        if body.get("su", True) and (self.su_address or self._su_factory):
            try:
                su = self._su_links.request("su.stats", {})["result"]
            except TwofoldError as exc:  # status must work while SU is down
                su = {"error": str(exc)}
        return {"owners": owners, "lr_owners": lr_owners, "dt_owners": dt_owners, "models": models, "links": links,
                "pool": len(self.system_pool), "su": su, "lr_pool": len(self._t1) if self._t1 else 0,
                "lr_online": self._t1.made_online if self._t1 else 0,
                "run": self._run.as_dict() if self._run else None,
                "progress": dict(self._run.progress) if self._run else {}, "bits": self.params.bits}

    def _predict(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["model"] not in MODELS:
            raise InputError(f"unknown model {body['model']!r}")
        pk = self._registered_key(peer[1], "client", body["key_id"])
        model = self.model(body["model"])
        queries = [codec.cts_from_bytes(self.params, q) for q in body["queries"]]
        module = {"lr": lr, "dt": dt}.get(body["model"], nb)
        answers = module.predict(self.blocks(), model, queries, pk)
        return {"answers": [codec.ct_to_bytes(self.params, a) for a in answers]}
