"""Priv-LR as a plug-in: MU keeps every record's feature ciphertexts (with its PSDec1, made at upload) and each
owner's label statistics; SU keeps a run's opened additive share in a session (``lr.*`` messages)."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import InputError, ProtocolError, ServiceError
from twofold.he import codec, fastexp
from twofold.he.blocks import Blocks
from twofold.he.models import lr
from twofold.he.models.base import MUContext, Progress, Reply, SUContext, register
from twofold.he.models.nb_plugin import PerRecordModel, add_into, interrupted


def run_fingerprint(owners: list[lr.OwnerData], weights: list[bytes] | None, iterations: int) -> str:
    """Identifies one Priv-LR run: the stored records and statistics, the starting weights and the step count."""
    digest = hashlib.sha256(f"lr-run-v1:{iterations}:{len(owners)}".encode())
    for owner in owners:
        digest.update(wire.public_key_to_bytes(owner.pk))
        digest.update(owner.records.to_bytes(8, "big"))
        for blob in [*owner.x, *owner.stats]:
            digest.update(len(blob).to_bytes(4, "big") + blob)
    for blob in weights or []:
        digest.update(b"w" + len(blob).to_bytes(4, "big") + blob)
    return digest.hexdigest()


@register
class LogisticRegression(PerRecordModel):
    name = "lr"
    title = "Priv-LR"
    schema_type = lr.LRSchema
    schema_file = "lr.json"
    store = "lr-owners"
    status_key = "lr_owners"
    scheme = lr

    def encode(self, schema: Any, row: Sequence[float]) -> list[int]:
        """Standardized fixed-point features."""
        return schema.encode_row(row)

    def new_owner(self) -> dict[str, Any]:
        return {"x": [], "xp": [], "stats": None}

    def prepare(self, mu: MUContext, schema: Any, cts: list[dtpkc.Ciphertext], records: int) -> Any:
        """MU's PSDec1 of each record ciphertext, computed once here and reused by every run (``lr.Session``)."""
        lay = lr.layout_for(mu.params, schema)
        per = lay.cts_per_record
        return lr.upload_partials(mu.share, [c for r in range(records) for c in cts[r * per:r * per + lay.a_cts]],
                                  mu.threads)

    def absorb(self, mu: MUContext, schema: Any, doc: dict[str, Any], cts: list[dtpkc.Ciphertext], records: int,
               prepared: Any) -> None:
        """Keep each record's feature ciphertexts; add its label statistics into the owner's aggregate."""
        if doc["records"] + records >= 1 << lr.COUNT_BITS:
            raise InputError("too many training records for the statistics layout")
        lay = lr.layout_for(mu.params, schema)
        per = lay.cts_per_record
        agg = codec.cts_from_bytes(mu.params, doc["stats"]) if doc["stats"] else None
        if "xp" in doc and len(doc["xp"]) == len(doc["x"]):
            doc["xp"] += prepared
        for r in range(records):
            rec = cts[r * per:(r + 1) * per]
            doc["x"] += [codec.ct_to_bytes(mu.params, c) for c in rec[:lay.a_cts]]
            agg = add_into(mu.params, agg, rec[lay.a_cts:])
        doc["stats"] = [codec.ct_to_bytes(mu.params, c) for c in agg or []]

    def train(self, mu: MUContext, schema: Any, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        owners = [lr.OwnerData(wire.public_key_from_bytes(mu.params, d["key"]), d["records"], d["x"], d["stats"],
                               d.get("xp")) for _, d in mu.owner_docs(self)]
        prev = None if body["fresh"] else mu.stored_model("lr")
        target = body["iterations"] or lr.ITERATIONS
        # A run interrupted by SU resumes from its last completed step, if it was the same run: same records,
        # same starting weights, same number of steps. Anything else discards the checkpoint.
        checkpoint = mu.checkpoint("lr")
        fingerprint = run_fingerprint(owners, prev["w"] if prev else None, target)
        saved = checkpoint.load()
        if saved and saved.get("fingerprint") == fingerprint and 0 < saved["done"] < target:
            done_before, weights = saved["done"], saved["w"]
        else:
            checkpoint.clear()
            done_before, weights = 0, (prev["w"] if prev else None)
        before, start = mu.su_bytes(), time.perf_counter()
        progress.offset = done_before

        def on_step(done: int, w: list[bytes]) -> None:
            checkpoint.save({"fingerprint": fingerprint, "done": done_before + done, "w": w})

        try:
            model = lr.train(mu.blocks(), mu.t1(), schema, owners, weights, target - done_before, progress=progress,
                             on_step=on_step)
        except ServiceError as exc:
            done = (checkpoint.load() or {}).get("done", 0)
            raise interrupted(exc, "training", f"progress is saved ({done} of {target} iterations)") from None
        model["iterations"] = target + (prev.get("iterations", 0) if prev else 0)
        model["resumed"] = bool(prev) or done_before > 0
        checkpoint.clear()
        return {"model": model, "result": {
            "model": "lr", "records": model["records"], "owners": len(owners), "resumed": model["resumed"],
            "resumed_at_iteration": done_before, "seconds": time.perf_counter() - start,
            "iterations": model["iterations"], "bytes_mu_su": mu.su_bytes() - before}}

    def predict(self, blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
                client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        return lr.predict(blocks, model, queries, client)

    # ------------------------------------------------------------------------------------------ SU

    def su_handlers(self) -> dict[str, Callable[[SUContext, dict[str, Any]], Reply]]:
        return {"lr.load": su_load, "lr.forward": su_forward, "lr.sigmoid": su_sigmoid, "lr.backward": su_backward,
                "lr.scale": su_scale, "lr.dot": su_dot, "lr.close": su_close}


def _session(su: SUContext, sid: str) -> dict[str, Any]:
    session = su.sessions().get(sid)
    if session is None:
        raise InputError("unknown or expired Priv-LR session (SU restarted?): rerun train")
    return session


def _rows(su: SUContext, body: dict[str, Any]) -> list[list[int]]:
    """Open blinded packed records into rows [2^FX, x_1 + m_1, ...] (SU's additive share)."""
    cols, width, slots, per = body["cols"], body["width"], body["slots"], body["per"]
    if not 1 <= cols <= 4096 or slots < 1 or slots * width >= su.params.bits or per != -(-cols // slots):
        raise ProtocolError("bad record layout")
    values = su.open(body["x"])
    if len(values) % per:
        raise ProtocolError("records are not whole")
    rows = []
    for r in range(0, len(values), per):
        flat = [v for x in values[r:r + per] for v in codec.unpack(x, width, slots)]
        rows.append([1 << lr.FX, *flat[:cols]])
    return rows


def su_load(su: SUContext, body: dict[str, Any]) -> Reply:
    """Keep the opened share A = X + M' for the session, in parts (``first`` starts the session, later parts
    append rows, so MU prepares the next part while SU opens this one); return the opened label statistics
    re-encrypted."""
    swidth, sslots, sid = body["swidth"], body["sslots"], body["session"]
    sessions = su.sessions()
    if sslots < 1 or swidth * sslots >= su.params.bits:
        raise ProtocolError("bad statistics layout")
    if body["first"] == (sid in sessions):
        raise InputError("Priv-LR session already started" if body["first"] else
                         "unknown or expired Priv-LR session (SU restarted?): rerun train")
    rows = _rows(su, body)
    if not rows and body["first"]:
        raise InputError("no records to train on")
    if not body["first"] and rows and len(rows[0]) != len(sessions[sid]["a"][0]):
        raise ProtocolError("records do not match the session's columns")
    t1 = su.t1()
    out = [t1.encrypt(v) for x in su.open(body["stats"]) for v in codec.unpack(x, swidth, sslots)]
    if body["first"]:
        sessions[sid] = {"a": rows, "e": None}
    else:
        sessions[sid]["a"] += rows
        sessions[sid].pop("columns", None)
    return su.out(out)


def su_forward(su: SUContext, body: dict[str, Any]) -> Reply:
    """[A_i . w] for every stored row, re-randomized."""
    rows = _session(su, body["session"])["a"]
    w = codec.cts_from_bytes(su.params, body["w"])
    if len(w) != len(rows[0]):
        raise ProtocolError("weights do not match the session's columns")
    t1 = su.t1()
    return su.out([t1.rerandomize(c) for c in fastexp.t1_multiexp(w, rows, su.params)])


def su_sigmoid(su: SUContext, body: dict[str, Any]) -> Reply:
    """Open s = z + r; [e] = sum_k c_k (sin(h s') [cos(h r')] - cos(h s') [sin(h r')]) by angle addition."""
    session = _session(su, body["session"])
    n = len(session["a"])
    zwidth, zslots, period, harmonics, coef = (body[k] for k in ("zwidth", "zslots", "period", "harmonics", "coef"))
    if zslots < 1 or zwidth * zslots >= su.params.bits or period < 2 or not 1 <= len(harmonics) <= 16 \
            or len(coef) != len(harmonics) or any(abs(c) >= 1 << 32 for c in coef) \
            or any(not 1 <= h <= 1 << 16 for h in harmonics):
        raise ProtocolError("bad sigmoid parameters")
    s = [v for x in su.open(body["z"]) for v in codec.unpack(x, zwidth, zslots)][:n]
    trig = codec.cts_from_bytes(su.params, body["trig"])
    if len(s) != n or len(trig) != 2 * len(harmonics) * n:
        raise ProtocolError("sigmoid inputs do not match the session")
    exps = []
    for v in s:
        phase = 2 * math.pi * (v % period) / period
        row = []
        for h, c in zip(harmonics, coef, strict=True):
            row += [round(c * math.sin(h * phase)), -round(c * math.cos(h * phase))]
        exps.append(row)
    t1 = su.t1()
    out = [t1.rerandomize(c) for c in lr.angle_sums(trig, exps, max(abs(c) for c in coef), su.params)]
    session["e"] = out
    return su.out(out)


def su_backward(su: SUContext, body: dict[str, Any]) -> Reply:
    """[A^T e] from the session's share and its last sigmoid values."""
    session = _session(su, body["session"])
    if session["e"] is None:
        raise InputError("no sigmoid values in this session yet")
    if "columns" not in session:
        session["columns"] = [list(col) for col in zip(*session["a"], strict=True)]
    t1 = su.t1()
    return su.out([t1.rerandomize(c) for c in fastexp.t1_multiexp_buckets(session["e"], session["columns"],
                                                                          su.params)])


def su_scale(su: SUContext, body: dict[str, Any]) -> Reply:
    """Enc(floor(v * mult / 2^shift)) for each opened blinded slot v."""
    width, slots, count, mult, shift = (body[k] for k in ("width", "slots", "count", "mult", "shift"))
    if slots < 1 or width * slots >= su.params.bits or not 0 < mult < 1 << 64 or not 0 <= shift <= 1024:
        raise ProtocolError("bad scaling parameters")
    values = [v for x in su.open(body["items"]) for v in codec.unpack(x, width, slots)][:count]
    if len(values) != count:
        raise ProtocolError("too few slots")
    t1 = su.t1()
    return su.out([t1.encrypt((v * mult) >> shift) for v in values])


def su_dot(su: SUContext, body: dict[str, Any]) -> Reply:
    """[(x + m) . w] for opened blinded queries (no state kept)."""
    rows = _rows(su, body)
    w = codec.cts_from_bytes(su.params, body["w"])
    if rows and len(w) != len(rows[0]):
        raise ProtocolError("weights do not match the queries")
    t1 = su.t1()
    return su.out([t1.rerandomize(c) for c in fastexp.t1_multiexp(w, rows, su.params)])


def su_close(su: SUContext, body: dict[str, Any]) -> Reply:
    su.sessions().pop(body["session"], None)
    return "ok", {"result": {}}
