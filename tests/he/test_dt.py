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


def test_breast_cancer_matches_reference_tree(crypto, blocks):
    """Depth 2 on breast_cancer (70/30 split, 5 public bins): same tree, same predictions, same accuracy."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    data = datasets.load_breast_cancer()
    xs, ys = data.data.tolist(), [str(int(v)) for v in data.target]
    xtr, xte, ytr, yte = train_test_split(xs, ys, test_size=0.3, random_state=0, stratify=ys)
    schema = nb.fit_schema([f"f{i}" for i in range(len(xs[0]))], "label", xtr, ytr, 5)
    lay = nb.layout_for(crypto.params, schema)
    half = len(xtr) // 2
    owners = [owner_records(crypto, lay, schema, xtr[:half], ytr[:half], crypto.owner.public),
              owner_records(crypto, lay, schema, xtr[half:], ytr[half:], crypto.owner.public)]
    model = dt.train(blocks, schema, owners, 2)
    ref = dt.reference_train(schema, xtr, ytr, 2)
    assert model["splits"] == ref["splits"]
    enc_q = [nb.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.bin_row(r)) for r in xte]
    got = [int(dtpkc.weak_decrypt(crypto.client.secret, a))
           for a in dt.predict(blocks, model, enc_q, crypto.client.public)]
    want = [dt.reference_predict(schema, ref, r) for r in xte]
    assert got == want
    truth = [schema.class_index(y) for y in yte]
    acc = sum(g == t for g, t in zip(got, truth, strict=True)) / len(truth)
    ref_acc = sum(w == t for w, t in zip(want, truth, strict=True)) / len(truth)
    assert abs(acc - ref_acc) <= 0.01 and acc > 0.85
