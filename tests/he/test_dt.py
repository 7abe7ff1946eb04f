"""Priv-DT against an in-process SU: the encrypted tree equals the plaintext reference tree."""

from __future__ import annotations

import pytest

from twofold.crypto import dtpkc
from twofold.he import codec
from twofold.he.models import dt, nb

from .test_nb import synthetic


def owner_records(crypto, lay, schema, rows, ys, pk) -> dt.OwnerRecords:
    cells, bins = [], []
    for row, y in zip(rows, ys, strict=True):
        cts = dt.encrypt_record(lambda m: dtpkc.encrypt(pk, m % int(crypto.params.n)), lay, schema.bin_row(row),
                                schema.class_index(y))
        cells.append(cts[: lay.cts_per_record])
        bins.append(cts[lay.cts_per_record:])
    return dt.OwnerRecords(pk, cells, bins)


@pytest.mark.parametrize("classes, depth", [(2, 2), (3, 1)])
def test_train_and_predict_match_reference(crypto, blocks, classes, depth):
    rows, ys = synthetic(36, seed=7, classes=classes, features=3)
    schema = nb.fit_schema(["a", "b", "c"], "y", rows, ys, bins=3)
    lay = nb.layout_for(crypto.params, schema)
    owners = [owner_records(crypto, lay, schema, rows[:20], ys[:20], crypto.owner.public),
              owner_records(crypto, lay, schema, rows[20:], ys[20:], crypto.owner.public)]
    model = dt.train(blocks, schema, owners, depth)
    ref = dt.reference_train(schema, rows, ys, depth)
    assert model["splits"] == ref["splits"]
    labels = [int(dtpkc.strong_decrypt(crypto.strong, codec.ct_from_bytes(crypto.params, c))) for c in model["labels"]]
    assert labels == ref["labels"]
    queries = rows[:10]
    enc_q = [nb.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.bin_row(r))
             for r in queries]
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, a))
           for a in dt.predict(blocks, model, enc_q, crypto.client.public)]
    assert got == [dt.reference_predict(schema, ref, r) for r in queries]
