"""Priv-DT against an in-process SU: the encrypted tree equals the plaintext reference tree."""

from __future__ import annotations

import contextlib

import pytest

from twofold.crypto import dtpkc
from twofold.he import codec
from twofold.he.models import dt, nb

from .test_nb import synthetic


def owner_records(crypto, lay, schema, rows, ys, pk, chunk=16) -> dt.OwnerRecords:
    """An owner's records as MU keeps them after uploads of ``chunk`` records each."""
    cells, bins = [], []
    for start in range(0, len(rows), chunk):
        part, labels = rows[start:start + chunk], ys[start:start + chunk]
        cts = dt.encrypt_chunk(lambda m: dtpkc.encrypt(pk, m % int(crypto.params.n)), lay,
                               [schema.bin_row(r) for r in part], [schema.class_index(y) for y in labels])
        rec, cols = dt.split_chunk(lay, cts, len(part))
        cells += rec
        bins.append((len(part), cols))
    return dt.OwnerRecords(pk, cells, bins)


def encrypted_predictions(crypto, blocks, lay, schema, model, rows) -> list[int]:
    """The classes the tree gives ``rows`` queried encrypted under the client's key, decrypted by the client."""
    queries = [nb.encrypt_query(lambda m: dtpkc.encrypt(crypto.client.public, m), lay, schema.bin_row(r))
               for r in rows]
    return [int(dtpkc.weak_decrypt(crypto.client.secret, a))
            for a in dt.predict(blocks, model, queries, crypto.client.public)]


@contextlib.contextmanager
def recording_su_openings(su, seen: list[dict[str, list[int]]]):
    """A handler for ``local_pair`` that records, per message kind, every value SU opens into ``seen[-1]``."""
    current = [""]
    original = su.open

    def spy(items):
        values = original(items)
        seen[-1].setdefault(current[0], []).extend(values)
        return values

    def handler(kind, body, peer, call=None):
        current[0] = kind
        return su.handle(kind, body, peer, call)

    su.open = spy
    try:
        yield handler
    finally:
        su.open = original


def twice_recorded(crypto, su, system_pool, run) -> tuple[list, list[dict[str, list[int]]]]:
    """``run(blocks)`` twice against SU, each over a fresh link; the two results and what SU opened in each."""
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    seen: list[dict[str, list[int]]] = []
    results = []
    with recording_su_openings(su, seen) as handler:
        for _ in range(2):
            seen.append({})
            link = local_pair(handler)
            results.append(run(Blocks(link, crypto.share1, system_pool, threads=1)))
            link.close()
    return results, seen


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
    got = encrypted_predictions(crypto, blocks, lay, schema, model, queries)
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
    got = encrypted_predictions(crypto, blocks, lay, schema, model, xte)
    want = [dt.reference_predict(schema, ref, r) for r in xte]
    assert got == want
    truth = [schema.class_index(y) for y in yte]
    acc = sum(g == t for g, t in zip(got, truth, strict=True)) / len(truth)
    ref_acc = sum(w == t for w, t in zip(want, truth, strict=True)) / len(truth)
    assert abs(acc - ref_acc) <= 0.01 and acc > 0.85


def test_su_failure_mid_training_resumes_from_checkpoint(crypto, su, system_pool):
    """SU dies during level 1: the next run resumes after level 0 (not recomputed) and gives the same tree."""
    from twofold.errors import ServiceError
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    rows, ys = synthetic(40, seed=11, classes=2, features=3)
    schema = nb.fit_schema(["a", "b", "c"], "y", rows, ys, bins=3)
    lay = nb.layout_for(crypto.params, schema)
    owners = [owner_records(crypto, lay, schema, rows[:25], ys[:25], crypto.owner.public),
              owner_records(crypto, lay, schema, rows[25:], ys[25:], crypto.owner.public)]
    seen: list[str] = []

    def dying(kind, body, peer, call=None):
        seen.append(kind)
        if kind == "dt.pick" and seen.count("dt.pick") == 2:  # level 1's pick: its reply never arrives
            raise ServiceError("SU went away")
        return su.handle(kind, body, peer, call)

    checkpoint = nb.MemoryCheckpoint()
    link = local_pair(dying)
    with pytest.raises(ServiceError):
        dt.train(Blocks(link, crypto.share1, system_pool, threads=1), schema, owners, 2, checkpoint=checkpoint)
    link.close()
    assert checkpoint.doc is not None and checkpoint.doc["levels"] == 1
    # MU resumes it only over exactly these records (and its depth); more records or another depth: not
    assert dt.resumable_depth(checkpoint.doc, schema, owners, crypto.params) == 2
    assert dt.resumable_depth(checkpoint.doc, schema, owners, crypto.params, 2) == 2
    assert dt.resumable_depth(checkpoint.doc, schema, owners, crypto.params, 1) is None
    assert dt.resumable_depth(checkpoint.doc, schema, owners[:1], crypto.params) is None
    more = [owners[0], grown(owners[1], owner_records(crypto, lay, schema, rows[:2], ys[:2], crypto.owner.public))]
    assert dt.resumable_depth(checkpoint.doc, schema, more, crypto.params) is None
    seen.clear()
    link = local_pair(dying)
    model = dt.train(Blocks(link, crypto.share1, system_pool, threads=1), schema, owners, 2, checkpoint=checkpoint)
    link.close()
    assert model["resumed"] and checkpoint.doc is None
    assert seen.count("dt.reveal") == 1 and seen.count("dt.select") == 1  # only level 1 was run again
    link = local_pair(su.handle)
    again = dt.train(Blocks(link, crypto.share1, system_pool, threads=1), schema, owners, 2)
    link.close()
    ref = dt.reference_train(schema, rows, ys, 2)
    assert model["splits"] == again["splits"] == ref["splits"]

    def labels(m):
        return [int(dtpkc.strong_decrypt(crypto.strong, codec.ct_from_bytes(crypto.params, c))) for c in m["labels"]]

    assert labels(model) == labels(again) == ref["labels"] and not again["resumed"]
    # a checkpoint of other records is not used
    dt._save_level(checkpoint, "other", 1, {1: (0, 0)}, {2: None, 3: None}, {2: [], 3: []}, crypto.params, False)
    link = local_pair(su.handle)
    fresh = dt.train(Blocks(link, crypto.share1, system_pool, threads=1), schema, owners[:1], 1, checkpoint=checkpoint)
    link.close()
    assert not fresh["resumed"] and fresh["splits"] == dt.reference_train(schema, rows[:25], ys[:25], 1)["splits"]


def test_packed_mul_and_duel(crypto, blocks):
    """Packed short-mask products are exact for signed operands; a duel returns the winner (ties: the first)."""
    n = int(crypto.params.n)

    def enc(v):
        return dt.t1_enc(blocks.system_pool, v % n)

    def dec(c):
        v = int(dtpkc.strong_decrypt(crypto.strong, c))
        return v - n if v > n // 2 else v

    a = [0, 1, -1, (1 << 21) - 1, -(1 << 21) + 1, 12345] * 7  # more operands than one ciphertext holds
    b = [5, -(1 << 21) + 3, 7, (1 << 21) - 1, -2, 0] * 7
    got = dt.mul(blocks, [enc(x) for x in a], [enc(y) for y in b], dt.COUNT_MUL)
    assert [dec(c) for c in got] == [x * y for x, y in zip(a, b, strict=True)]
    xs, ys = [3, 5, 4, -2], [5, 3, 4, -7]
    firsts = [[enc(100 + i), enc(i)] for i in range(4)]
    seconds = [[enc(200 + i), enc(10 + i)] for i in range(4)]
    won = dt.duel(blocks, [enc(x) for x in xs], [enc(y) for y in ys], dt.BOUND_BITS, firsts, seconds)
    assert [[dec(c) for c in w] for w in won] == [[200, 10], [101, 1], [102, 2], [103, 3]]


def test_su_sees_only_blinded_values(crypto, su, system_pool):
    """Everything SU opens except the revealed split indices differs between two runs on the same data (fresh
    masks, rotations and coins) and is never a plaintext bin column or count vector of the data."""

    rows, ys = synthetic(24, seed=5, classes=2, features=3)
    schema = nb.fit_schema(["a", "b", "c"], "y", rows, ys, bins=3)
    lay = nb.layout_for(crypto.params, schema)
    owners = [owner_records(crypto, lay, schema, rows, ys, crypto.owner.public)]
    models, seen = twice_recorded(crypto, su, system_pool, lambda blocks: dt.train(blocks, schema, owners, 2))
    assert models[0]["splits"] == models[1]["splits"]
    assert seen[0]["dt.reveal"] == seen[1]["dt.reveal"]  # public by design
    kinds = set(seen[0]) - {"dt.reveal"}
    assert {"dt.unpack", "dt.mul", "dt.duel", "dt.select", "dt.pick"} <= kinds
    first = {v for k in kinds for v in seen[0][k]}
    second = {v for k in kinds for v in seen[1][k]}
    assert first and not first & second
    bins = [schema.bin_row(r) for r in rows]
    plain = {codec.pack([b[j] for b in part], lay.qwidth) for j in range(lay.features)
             for part in codec.chunks(bins, lay.q_slots)}
    for row, y in zip(bins, ys, strict=True):
        cells = nb.record_cells(lay, row, schema.class_index(y))
        plain |= {codec.pack(ch, lay.count_width) for ch in codec.chunks(cells, lay.count_slots)}
    assert not plain & first


def grown(owner: dt.OwnerRecords, more: dt.OwnerRecords) -> dt.OwnerRecords:
    """The owner's store after uploading ``more`` (new chunks appended; stored ciphertexts unchanged)."""
    return dt.OwnerRecords(owner.pk, owner.cells + more.cells, owner.bins + more.bins)


def decrypted(crypto, model):
    """(leaf labels, leaf class counts) of an encrypted model (strong key: test oracle)."""
    def dec(c):
        return int(dtpkc.strong_decrypt(crypto.strong, codec.ct_from_bytes(crypto.params, c)))

    return [dec(c) for c in model["labels"]], [[dec(c) for c in leaf] for leaf in model["leaf_counts"]]


def update_case(crypto, classes):
    """Part A (one owner, two chunks) and part B (a new chunk of that owner and a new owner) whose labels are
    flipped, so that the update moves some leaves' majorities."""
    rows, ys = synthetic(44, seed=17, classes=classes, features=3)
    ys = ys[:24] + [str((int(y) + 1) % classes) for y in ys[24:]]
    schema = nb.fit_schema(["a", "b", "c"], "y", rows, ys, bins=3)
    lay = nb.layout_for(crypto.params, schema)
    first = owner_records(crypto, lay, schema, rows[:24], ys[:24], crypto.owner.public, chunk=12)
    owners = [grown(first, owner_records(crypto, lay, schema, rows[24:34], ys[24:34], crypto.owner.public)),
              owner_records(crypto, lay, schema, rows[34:], ys[34:], crypto.client.public, chunk=6)]
    return rows, ys, schema, lay, [first], owners


@pytest.mark.parametrize("classes, depth", [(2, 2), (3, 1)])
def test_online_update_matches_reference(crypto, su, system_pool, classes, depth):
    """Train on A, update with B: A's splits, leaf counts and labels of A + B, equal to the plaintext update;
    only the new records are selected and picked; no split is revealed; an update without new records, or over
    a store whose held records changed, changes nothing."""
    from twofold.errors import InputError
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    rows, ys, schema, lay, before, owners = update_case(crypto, classes)
    kinds: list[tuple[str, dict]] = []

    def handler(kind, body, peer, call=None):
        kinds.append((kind, body))
        return su.handle(kind, body, peer, call)

    link = local_pair(handler)
    blocks = Blocks(link, crypto.share1, system_pool, threads=1)
    model = dt.train(blocks, schema, before, depth)
    ref = dt.reference_train(schema, rows[:24], ys[:24], depth)
    assert model["splits"] == ref["splits"] and decrypted(crypto, model) == (ref["labels"], ref["counts"])
    kinds.clear()
    plan = dt.plan_update(crypto.params, schema, model, owners)
    assert plan.reason is None and plan.new_records == 20 and [len(o.cells) for o in plan.new] == [10, 10]
    updated = dt.update(blocks, schema, model, owners)
    want = dt.reference_update(schema, ref, rows[24:], ys[24:])
    assert updated["splits"] == model["splits"] == want["splits"]
    assert decrypted(crypto, updated) == (want["labels"], want["counts"])
    assert want["labels"] != ref["labels"]  # the case exercises a change of majority
    assert updated["records"] == 44 and updated["owners"] == 2
    sent = [k for k, _ in kinds]
    assert "dt.reveal" not in sent and sent.count("dt.select") == depth and sent.count("dt.pick") == 1
    picked = next(b for k, b in kinds if k == "dt.pick")
    assert sum(len(g["cts"]) for g in picked["groups"]) == 20 * (1 << depth)  # only the new records, per leaf
    queries = rows[:12]
    got = encrypted_predictions(crypto, blocks, lay, schema, updated, queries)
    assert got == [dt.reference_predict(schema, want, r) for r in queries]
    # nothing new: the model is unchanged and SU is not contacted
    kinds.clear()
    same = dt.update(blocks, schema, updated, owners)
    assert not kinds and {k: v for k, v in same.items() if k != "resumed"} == {
        k: v for k, v in updated.items() if k != "resumed"}
    link.close()
    # held records re-encrypted (a rewritten store), a missing owner, another depth: not updatable
    rewritten = [owner_records(crypto, lay, schema, rows[:34], ys[:34], crypto.owner.public, chunk=12), owners[1]]
    for store, d in ((rewritten, 0), (owners[1:], 0), (owners, depth + 1)):
        assert dt.plan_update(crypto.params, schema, updated, store, d).reason is not None
    with pytest.raises(InputError, match="cannot be updated"):
        dt.update(blocks, schema, updated, rewritten)
    assert dt.plan_update(crypto.params, schema, {k: v for k, v in model.items() if k != "leaf_counts"},
                          owners).reason is not None


def test_su_sees_only_blinded_values_during_update(crypto, su, system_pool):
    """Everything SU opens in an update differs between two updates of the same model with the same records
    and is never a plaintext bin column or count vector of the new records."""
    from twofold.he.blocks import Blocks
    from twofold.he.transport import local_pair

    rows, ys, schema, lay, before, owners = update_case(crypto, 2)
    link = local_pair(su.handle)
    model = dt.train(Blocks(link, crypto.share1, system_pool, threads=1), schema, before, 2)
    link.close()
    models, seen = twice_recorded(crypto, su, system_pool, lambda blocks: dt.update(blocks, schema, model, owners))
    assert decrypted(crypto, models[0]) == decrypted(crypto, models[1])
    assert models[0]["labels"] != models[1]["labels"]  # fresh ciphertexts
    assert set(seen[0]) == {"dt.select", "dt.pick", "dt.unpack", "dt.mul", "dt.duel"}
    # dt.pick opens reach XOR coin, uniform bits packed one per slot: short values (10 records per group here)
    # that may coincide by chance, so only the whole sequence is compared
    assert seen[0]["dt.pick"] != seen[1]["dt.pick"]
    first = {v for kind, vals in seen[0].items() if kind != "dt.pick" for v in vals}
    second = {v for kind, vals in seen[1].items() if kind != "dt.pick" for v in vals}
    assert first and not first & second
    bins = [schema.bin_row(r) for r in rows[24:]]
    plain = {codec.pack([b[j] for b in part], lay.qwidth) for j in range(lay.features)
             for part in codec.chunks(bins, lay.q_slots)}
    for row, y in zip(bins, ys[24:], strict=True):
        cells = nb.record_cells(lay, row, schema.class_index(y))
        plain |= {codec.pack(ch, lay.count_width) for ch in codec.chunks(cells, lay.count_slots)}
    assert not plain & first
