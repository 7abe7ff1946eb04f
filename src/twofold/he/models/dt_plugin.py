"""Priv-DT as a plug-in: MU keeps every chunk's count vectors and feature columns (Priv-DT needs records, not
sums); SU's ``dt.*`` handlers see only values MU has blinded (statistical masks, secret rotations, random coins)
except ``dt.reveal``, which opens the split index MU asks for (revealed to both servers by design, docs/he.md).
Every ciphertext SU returns is a fresh T1-only encryption or re-randomization under the system key (or, for
``dt.pick``, the owner's key): they are opened only by the two-server decryption, which reads T1 alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import InputError, ProtocolError, ServiceError
from twofold.he import codec
from twofold.he.blocks import Blocks
from twofold.he.models import dt, nb
from twofold.he.models.base import Encrypt, HEModel, MUContext, Progress, Reply, SUContext, register
from twofold.he.models.dt import t1_enc, t1_rerand
from twofold.he.models.nb_plugin import interrupted


def _layout_name(lay: nb.Layout) -> str:
    return f"columns:{lay.cts_per_record}:{lay.q_slots}:{lay.features}"


@register
class DecisionTree(HEModel):
    name = "dt"
    title = "Priv-DT"
    schema_type = nb.Schema
    schema_file = "schema.json"
    store = "dt-owners"
    status_key = "dt_owners"

    # ------------------------------------------------------------------------------ owner and client

    def encrypt_upload(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                       rows: Sequence[Sequence[float]], labels: Sequence[str]) -> list[dtpkc.Ciphertext]:
        """Count vectors, then the chunk's bins packed per feature."""
        return dt.encrypt_chunk(encrypt, nb.layout_for(params, schema), [schema.bin_row(r) for r in rows],
                                [schema.class_index(y) for y in labels])

    def encrypt_query(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                      row: Sequence[float]) -> list[dtpkc.Ciphertext]:
        return nb.encrypt_query(encrypt, nb.layout_for(params, schema), schema.bin_row(row))

    # ------------------------------------------------------------------------------------------ MU

    def upload_cts(self, params: dtpkc.PublicParams, schema: Any, records: int) -> int:
        return dt.chunk_cts(nb.layout_for(params, schema), records)

    def new_owner(self) -> dict[str, Any]:
        return {"cts": [], "sizes": [], "layout": None}

    def absorb(self, mu: MUContext, schema: Any, doc: dict[str, Any], cts: list[dtpkc.Ciphertext], records: int,
               prepared: Any) -> None:
        layout = _layout_name(nb.layout_for(mu.params, schema))
        if doc.get("layout", "") is None:
            doc["layout"] = layout
        if doc.get("layout") != layout:
            raise InputError("stored records do not match the schema or layout: the owner must upload again")
        doc["cts"] += [codec.ct_to_bytes(mu.params, c) for c in cts]
        doc["sizes"].append(records)

    def _owners(self, mu: MUContext, schema: Any) -> list[dt.OwnerRecords]:
        lay = nb.layout_for(mu.params, schema)
        owners = []
        for name, doc in mu.owner_docs(self):
            if "sizes" not in doc:
                raise InputError(f"stored Priv-DT records of {name} predate the column layout: upload again")
            cts = codec.cts_from_bytes(mu.params, doc["cts"])
            cells, bins, at = [], [], 0
            for size in doc["sizes"]:
                n = dt.chunk_cts(lay, size)
                rec, cols = dt.split_chunk(lay, cts[at:at + n], size)
                cells += rec
                bins.append((size, cols))
                at += n
            owners.append(dt.OwnerRecords(wire.public_key_from_bytes(mu.params, doc["key"]), cells, bins))
        return owners

    def train(self, mu: MUContext, schema: Any, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """A checkpoint of an interrupted training over exactly these records is resumed; otherwise a stored
        model is updated with the records it does not hold yet (unless ``fresh``); otherwise the tree is trained."""
        owners = self._owners(mu, schema)
        before, start = mu.su_bytes(), time.perf_counter()
        checkpoint = mu.checkpoint("dt")
        prev = mu.stored_model("dt")
        resume = dt.resumable_depth(checkpoint.load(), schema, owners, mu.params, body["iterations"])
        plan, reason = None, ""
        if prev is not None and resume is None:
            if body["fresh"]:
                reason = "--fresh"
            else:
                plan = dt.plan_update(mu.params, schema, prev, owners, body["iterations"])
                reason, plan = (plan.reason, None) if plan.reason else ("", plan)
        result = {"model": "dt", "owners": len(owners), "reason": reason}
        if plan is not None and not plan.new:
            return {"model": None, "result": {**result, "mode": "unchanged", "records": prev["records"],
                                               "new_records": 0, "resumed": False,
                                               "seconds": time.perf_counter() - start, "depth": prev["depth"],
                                               "bytes_mu_su": 0}}
        if plan is not None:
            try:
                model = dt.update(mu.blocks(), schema, prev, owners, plan=plan, progress=progress)
            except ServiceError as exc:
                raise interrupted(exc, "the update", "the stored model is unchanged") from None
            result |= {"mode": "update", "new_records": plan.new_records}
        else:
            depth = body["iterations"] or resume or (prev["depth"] if prev else dt.DEPTH)
            try:
                model = dt.train(mu.blocks(), schema, owners, depth, progress=progress, checkpoint=checkpoint)
            except ServiceError as exc:
                done = progress.done if progress.step == "level" else 0
                raise interrupted(exc, "training", f"progress is saved ({done} of {depth} levels)") from None
            result |= {"mode": "full", "new_records": model["records"]}
        return {"model": model, "result": {**result, "records": model["records"], "resumed": model["resumed"],
                                            "seconds": time.perf_counter() - start, "depth": model["depth"],
                                            "bytes_mu_su": mu.su_bytes() - before}}

    def predict(self, blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
                client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        return dt.predict(blocks, model, queries, client)

    # ------------------------------------------------------------------------------------------ SU

    def su_handlers(self) -> dict[str, Callable[[SUContext, dict[str, Any]], Reply]]:
        return {"dt.unpack": su_unpack, "dt.select": su_select, "dt.pick": su_pick, "dt.mul": su_mul,
                "dt.duel": su_duel, "dt.reveal": su_reveal}


def su_unpack(su: SUContext, body: dict[str, Any]) -> Reply:
    """Open packed counts blinded slot-wise (n + m, m uniform on [0, 2^60)); fresh system-key encryption per slot."""
    width, slots, count = body["width"], body["slots"], body["count"]
    if width < 8 or slots < 1 or slots * width >= su.params.bits or count < 1:
        raise ProtocolError("bad packing parameters")
    per = -(-count // slots)
    values = su.open(body["items"])
    if len(values) % per:
        raise ProtocolError("count vectors are not whole")
    out = []
    for r in range(0, len(values), per):
        flat = [v for x in values[r:r + per] for v in codec.unpack(x, width, slots)][:count]
        out += [t1_enc(su.system_pool, v) for v in flat]
    return su.out(out)


def su_select(su: SUContext, body: dict[str, Any]) -> Reply:
    """Per item: open the rotated bins t_j = z_j mod B and return each table's entry at t_j, re-randomized."""
    qwidth, bins, features = body["qwidth"], body["bins"], body["features"]
    if not 2 <= bins <= 1 << 16 or features < 1 or not 8 <= qwidth < su.params.bits:
        raise ProtocolError("bad selection parameters")
    per_ct = codec.slots_per_ct(su.params, qwidth)
    out = []
    for item in body["items"]:
        zs = [z for v in su.open(item["q"]) for z in codec.unpack(v, qwidth, per_ct)][:features]
        if len(zs) != features:
            raise ProtocolError("too few bins")
        for sel in item["sel"]:
            if not 0 <= sel["feature"] < features or len(sel["table"]) != bins:
                raise ProtocolError("bad selection table")
            ct = codec.ct_from_bytes(su.params, sel["table"][zs[sel["feature"]] % bins])
            out.append(t1_rerand(su.system_pool, ct))
    return su.out(out)


def su_pick(su: SUContext, body: dict[str, Any]) -> Reply:
    """Per group: open the uniform bits e_i (packed one per slot) and add up the records' ciphertexts with
    e_i = 1, re-randomized."""
    width, slots, p = body["width"], body["slots"], su.params
    if width < 1 or not 1 <= slots <= p.bits - 2:
        raise ProtocolError("bad width")
    n_sq = p.n_sq
    out = []
    for group in body["groups"]:
        pool = su.pool_for(group["key"])
        bits = [e for v in su.open(group["bits"]) for e in codec.unpack(v, 1, slots)][:len(group["cts"])]
        if len(bits) != len(group["cts"]) or not bits:
            raise ProtocolError("bits and records differ in length")
        acc = [t1_enc(pool, 0) for _ in range(width)]
        for e, cts in zip(bits, group["cts"], strict=True):
            if len(cts) != width:
                raise ProtocolError("a record is malformed")
            if e:
                acc = [dtpkc.Ciphertext(a.t1 * c.t1 % n_sq, 1) for a, c in zip(acc, codec.cts_from_bytes(p, cts),
                                                                                strict=True)]
        out += acc  # acc started from fresh encryptions of zero: re-randomized
    return su.out(out)


def su_mul(su: SUContext, body: dict[str, Any]) -> Reply:
    """Open packed operands a + r, b + s (statistical masks) and return a fresh encryption of each product."""
    width, count, p = body["width"], body["count"], su.params
    if width < 8 or 2 * width + 2 >= p.bits or count < 2 or count % 2:
        raise ProtocolError("bad multiplication parameters")
    slots = codec.slots_per_ct(p, width)
    values = [v for x in su.open(body["items"]) for v in codec.unpack(x, width, slots)]
    if len(values) < count or len(body["items"]) != -(-count // slots):
        raise ProtocolError("too few operands")
    n = int(p.n)
    return su.out([t1_enc(su.system_pool, values[i] * values[i + 1] % n) for i in range(0, count, 2)])


def su_duel(su: SUContext, body: dict[str, Any]) -> Reply:
    """Per item: open the blinded comparison value v (its sign is a fair coin) and return fresh
    re-randomizations of the candidate in front (the first ``width`` ciphertexts) if v >= 0, else of the other."""
    width, p = body["width"], su.params
    if not 1 <= width <= 16 or len(body["entries"]) != len(body["items"]):
        raise ProtocolError("bad duel parameters")
    if any(len(e) != 2 * width for e in body["entries"]):
        raise ProtocolError("a duel needs two candidates of the given width")
    out = []
    for v, entry in zip(su.open(body["items"]), body["entries"], strict=True):
        chosen = entry[:width] if codec.signed(v, p.n) >= 0 else entry[width:]
        out += [t1_rerand(su.system_pool, ct) for ct in codec.cts_from_bytes(p, chosen)]
    return su.out(out)


def su_reveal(su: SUContext, body: dict[str, Any]) -> Reply:
    """Open chosen split indices (public by design); refuses anything outside [0, bound)."""
    values = su.open(body["items"])
    if any(not 0 <= v < body["bound"] for v in values):
        raise ProtocolError("a revealed value is out of range")
    return "ok", {"result": {"values": values}}
