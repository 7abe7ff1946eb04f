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
from pathlib import Path
from typing import Any

import msgpack

from twofold.crypto import dtpkc
from twofold.errors import ConfigError, InputError, KeyAccessError, ProtocolError, ServiceError
from twofold.fsutil import make_private_dir, write_private
from twofold.he import codec, fastexp
from twofold.he.blocks import Blocks
from twofold.he.keys import SystemInfo, check_name
from twofold.he.models import dt, lr, nb
from twofold.he.randomness import KeyPools, PairPool
from twofold.he.transport import Channel, LinkStats, client_context, connect

log = logging.getLogger("twofold.he")
MODELS = ("nb", "lr", "dt")


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


class MasterUnit:
    """The MU request handler (transport independent); ``su_factory`` opens a link to SU."""

    def __init__(self, info: SystemInfo, state: Path, su_address: str | None, *, threads: int = 2,
                 pool_target: int = 0, lr_pool_target: int = 0, su_factory: Any = None) -> None:
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
        self._su: Channel | None = None
        self._su_lock = threading.Lock()
        self._train_lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._models: dict[str, dict[str, Any]] = {}
        self._key_pools = KeyPools()  # per owner/client key, kept across requests (tables), bounded
        self.link_stats: dict[str, LinkStats] = {}
        self.progress: dict[str, Any] = {}
        self._handlers = {"hello": (self._hello, ("owner", "client", "admin")),
                          "upload": (self._upload, ("owner",)), "train": (self._train, ("admin",)),
                          "status": (self._status, ("admin",)), "predict": (self._predict, ("client",))}

    # ------------------------------------------------------------------------------------------- plumbing

    def handle(self, kind: str, body: dict[str, Any], peer: tuple[str, str]) -> tuple[str, dict[str, Any]]:
        entry = self._handlers.get(kind)
        if entry is None:
            raise ProtocolError(f"MU does not serve {kind!r}")
        fn, roles = entry
        if peer[0] not in roles:
            raise KeyAccessError(f"a {peer[0]} may not send {kind}")
        return "ok", {"result": fn(body, peer)}

    def _link(self) -> Channel:
        with self._su_lock:
            if self._su is None:
                if self._su_factory is not None:
                    self._su = self._su_factory()
                else:
                    if not self.su_address:
                        raise ConfigError("MU was started without --su")
                    cert, key = self.info.tls_files("mu")
                    ctx = client_context(self.info.ca_pem, cert, key)
                    self._su = connect(self.su_address, ctx, "su", stats=[self.su_stats])
            return self._su

    def _drop_link(self) -> None:
        with self._su_lock:
            if self._su is not None:
                self._su.close()
            self._su = None

    def blocks(self) -> Blocks:
        return Blocks(self._link(), self.share, self.system_pool, threads=self.threads, pools=self._key_pools)

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
        return {"role": "mu", "bits": self.params.bits, "you": f"{peer[0]}:{peer[1]}"}

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

    def _train_dt(self, body: dict[str, Any]) -> dict[str, Any]:
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

        def progress(step: str, done: int, total: int) -> None:
            self.progress = {"model": "dt", "step": step, "done": done, "total": total}

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
                self._drop_link()
                raise ServiceError(f"SU failed during the update ({exc}); the stored model is unchanged: rerun "
                                   "train") from None
            result |= {"mode": "update", "new_records": plan.new_records}
        else:
            depth = body["iterations"] or resume or (prev["depth"] if prev else dt.DEPTH)
            try:
                model = dt.train(self.blocks(), schema, owners, depth, progress=progress, checkpoint=checkpoint)
            except ServiceError as exc:
                self._drop_link()
                done = self.progress.get("done", 0) if self.progress.get("model") == "dt" else 0
                raise ServiceError(f"SU failed during training ({exc}); progress is saved ({done} of "
                                   f"{depth} levels): rerun train to resume") from None
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

    def _train_lr(self, body: dict[str, Any]) -> dict[str, Any]:
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

        def progress(step: str, done: int, total: int) -> None:
            self.progress = {"model": "lr", "step": step, "done": done_before + done, "total": target}

        def on_step(done: int, w: list[bytes]) -> None:
            checkpoint.save({"fingerprint": fingerprint, "done": done_before + done, "w": w})

        try:
            model = lr.train(self.blocks(), self.t1(), load_lr_schema(self.info), owners, weights,
                             target - done_before, progress=progress, on_step=on_step)
        except ServiceError as exc:
            self._drop_link()
            done = (checkpoint.load() or {}).get("done", 0)
            raise ServiceError(f"SU failed during training ({exc}); progress is saved ({done} of {target} "
                               "iterations): rerun train to resume") from None
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

    def _train(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["model"] not in MODELS:
            raise InputError(f"unknown model {body['model']!r}")
        if not self._train_lock.acquire(blocking=False):
            raise ServiceError("a training run is already in progress")
        try:
            if body["model"] == "lr":
                return self._train_lr(body)
            if body["model"] == "dt":
                return self._train_dt(body)
            schema = load_schema(self.info)
            owners, records = self._owners()
            checkpoint = _FileCheckpoint(self.state / "checkpoints" / f"{body['model']}.msgpack")
            before = self.su_stats.sent + self.su_stats.received
            start = time.perf_counter()

            def progress(step: str, done: int, total: int) -> None:
                self.progress = {"model": body["model"], "step": step, "done": done, "total": total}

            try:
                model = nb.train(self.blocks(), schema, owners, checkpoint, chunk=body["chunk"] or 256,
                                 progress=progress)
            except ServiceError as exc:
                self._drop_link()
                done = self.progress.get("done", 0)
                raise ServiceError(f"SU failed during training ({exc}); progress is saved ({done} of "
                                   f"{self.progress.get('total', '?')} table entries): rerun train to resume") from None
            model["records"] = records
            self._save(self.state / "models" / f"{body['model']}.msgpack", model)
            self._models[body["model"]] = model
            return {"model": body["model"], "records": records, "owners": len(owners), "resumed": model["resumed"],
                    "seconds": time.perf_counter() - start,
                    "bytes_mu_su": self.su_stats.sent + self.su_stats.received - before}
        finally:
            self._train_lock.release()

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
                su = self._link().request("su.stats", {})["result"]
            except Exception as exc:  # status must work while SU is down
                self._drop_link()
                su = {"error": str(exc)}
        return {"owners": owners, "lr_owners": lr_owners, "dt_owners": dt_owners, "models": models, "links": links,
                "pool": len(self.system_pool), "su": su, "lr_pool": len(self._t1) if self._t1 else 0,
                "lr_online": self._t1.made_online if self._t1 else 0,
                "progress": dict(self.progress), "bits": self.params.bits}

    def _predict(self, body: dict[str, Any], peer: tuple[str, str]) -> dict[str, Any]:
        if body["model"] not in MODELS:
            raise InputError(f"unknown model {body['model']!r}")
        pk = self._registered_key(peer[1], "client", body["key_id"])
        model = self.model(body["model"])
        queries = [codec.cts_from_bytes(self.params, q) for q in body["queries"]]
        try:
            module = {"lr": lr, "dt": dt}.get(body["model"], nb)
            answers = module.predict(self.blocks(), model, queries, pk)
        except ServiceError:
            self._drop_link()
            raise
        return {"answers": [codec.ct_to_bytes(self.params, a) for a in answers]}
