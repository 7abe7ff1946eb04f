"""Priv-NB as a plug-in: owners upload encrypted count vectors, MU keeps each owner's sum, and SU's generic
blocks (``su.shares_mulpack``, ``su.log_pack``, ``su.select_sum``, ``su.argmax``) do the rest."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import InputError, ServiceError
from twofold.he import codec
from twofold.he.blocks import Blocks
from twofold.he.models import nb
from twofold.he.models.base import Encrypt, HEModel, MUContext, Progress, register


def add_into(params: dtpkc.PublicParams, agg: list[dtpkc.Ciphertext] | None,
             rec: Sequence[dtpkc.Ciphertext]) -> list[dtpkc.Ciphertext]:
    """The slot-wise homomorphic sum of an aggregate and one record (the record itself for a new aggregate)."""
    if agg is None:
        return list(rec)
    return [dtpkc.add(params, a, b) for a, b in zip(agg, rec, strict=True)]


def interrupted(exc: ServiceError, what: str, saved: str) -> ServiceError:
    """The error of a run that SU interrupted (a cancellation passes through unchanged)."""
    if type(exc) is not ServiceError:  # RunCancelled and other deliberate stops
        return exc
    return ServiceError(f"SU failed during {what} ({exc}); {saved}: rerun train to resume")


class PerRecordModel(HEModel):
    """A model whose upload is the same fixed number of ciphertexts per record and whose query encodes one row
    the same way: ``scheme`` is its module (``layout_for``, ``encrypt_record``, ``encrypt_query``) and
    :meth:`encode` turns a row into the integers it encrypts."""

    scheme: ClassVar[Any]

    def encode(self, schema: Any, row: Sequence[float]) -> list[int]:
        raise NotImplementedError

    def encrypt_upload(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                       rows: Sequence[Sequence[float]], labels: Sequence[str]) -> list[dtpkc.Ciphertext]:
        lay = self.scheme.layout_for(params, schema)
        return [ct for row, y in zip(rows, labels, strict=True)
                for ct in self.scheme.encrypt_record(encrypt, lay, self.encode(schema, row), schema.class_index(y))]

    def encrypt_query(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                      row: Sequence[float]) -> list[dtpkc.Ciphertext]:
        return self.scheme.encrypt_query(encrypt, self.scheme.layout_for(params, schema), self.encode(schema, row))

    def upload_cts(self, params: dtpkc.PublicParams, schema: Any, records: int) -> int:
        return records * self.scheme.layout_for(params, schema).cts_per_record


@register
class NaiveBayes(PerRecordModel):
    name = "nb"
    title = "Priv-NB"
    schema_type = nb.Schema
    schema_file = "schema.json"
    store = "owners"
    status_key = "owners"
    scheme = nb

    def encode(self, schema: Any, row: Sequence[float]) -> list[int]:
        return schema.bin_row(row)

    def new_owner(self) -> dict[str, Any]:
        return {"agg": None}

    def absorb(self, mu: MUContext, schema: Any, doc: dict[str, Any], cts: list[dtpkc.Ciphertext], records: int,
               prepared: Any) -> None:
        total = sum(d["records"] for _, d in mu.owner_docs(self))
        if total + records >= 1 << nb.COUNT_BITS:
            raise InputError("too many training records for the count layout")
        per = nb.layout_for(mu.params, schema).cts_per_record
        agg = codec.cts_from_bytes(mu.params, doc["agg"]) if doc["agg"] else None
        for r in range(records):
            agg = add_into(mu.params, agg, cts[r * per:(r + 1) * per])
        doc["agg"] = [codec.ct_to_bytes(mu.params, c) for c in agg or []]

    def train(self, mu: MUContext, schema: Any, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        docs = [d for _, d in mu.owner_docs(self) if d["agg"]]
        owners = [(wire.public_key_from_bytes(mu.params, d["key"]), d["agg"]) for d in docs]
        records = sum(d["records"] for d in docs)
        before, start = mu.su_bytes(), time.perf_counter()
        try:
            model = nb.train(mu.blocks(), schema, owners, mu.checkpoint("nb"), chunk=body["chunk"] or 256,
                             progress=progress)
        except ServiceError as exc:
            raise interrupted(exc, "training", f"progress is saved ({progress.done} of {progress.total or '?'} "
                                               "table entries)") from None
        model["records"] = records
        return {"model": model, "result": {"model": "nb", "records": records, "owners": len(owners),
                                            "resumed": model["resumed"], "seconds": time.perf_counter() - start,
                                            "bytes_mu_su": mu.su_bytes() - before}}

    def predict(self, blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
                client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        return nb.predict(blocks, model, queries, client)
