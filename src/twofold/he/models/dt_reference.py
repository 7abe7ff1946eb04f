"""Priv-DT in plaintext: the same candidates, Gini proxy, tournament and tie rules, for tests and accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twofold.he.models import nb
from twofold.he.models.dt_format import DEPTH, candidates


def _tournament_plain(groups: list[list[tuple[int, int, int]]]) -> list[int]:
    while any(len(g) > 1 for g in groups):
        new = []
        for g in groups:
            row = [g[i] if g[i][0] * g[i + 1][1] >= g[i + 1][0] * g[i][1] else g[i + 1]
                   for i in range(0, len(g) - 1, 2)]
            new.append(row + ([g[-1]] if len(g) % 2 else []))
        groups = new
    return [g[0][2] for g in groups]


def reference_train(schema: nb.Schema, rows: Sequence[Sequence[float]], labels: Sequence[str],
                    depth: int = DEPTH) -> dict[str, Any]:
    """The same tree in plaintext: same candidates, proxy, tournament order and tie rules."""
    lay = nb.Layout(0, len(schema.classes), len(schema.features), schema.bins)
    data = [(schema.bin_row(r), schema.class_index(y)) for r, y in zip(rows, labels, strict=True)]
    members = {1: data}
    splits: dict[int, tuple[int, int]] = {}
    cands = candidates(lay)
    for level in range(depth):
        for k in range(1 << level, 1 << (level + 1)):
            recs = members[k]
            tot = [sum(1 for _, y in recs if y == c) for c in range(lay.classes)]
            entries = []
            for idx, (j, t) in enumerate(cands):
                left = [sum(1 for b, y in recs if y == c and b[j] <= t) for c in range(lay.classes)]
                right = [x - y for x, y in zip(tot, left, strict=True)]
                ln, rn = sum(left) + 1, sum(right) + 1
                num = sum(x * x for x in left) * rn + sum(x * x for x in right) * ln
                entries.append((num, ln * rn, idx))
            splits[k] = cands[_tournament_plain([entries])[0]]
            j, t = splits[k]
            members[2 * k] = [(b, y) for b, y in recs if b[j] <= t]
            members[2 * k + 1] = [(b, y) for b, y in recs if b[j] > t]
    counts = [[sum(1 for _, y in members[k] if y == c) for c in range(lay.classes)]
              for k in range(1 << depth, 1 << (depth + 1))]
    return {"depth": depth, "splits": [list(splits[k]) for k in range(1, 1 << depth)], "counts": counts,
            "labels": [_majority(c) for c in counts]}


def _majority(counts: Sequence[int]) -> int:
    return _tournament_plain([[(n, 1, c) for c, n in enumerate(counts)]])[0]


def _leaf_index(schema: nb.Schema, tree: dict[str, Any], row: Sequence[float]) -> int:
    bins = schema.bin_row(row)
    k = 1
    for _ in range(tree["depth"]):
        j, t = tree["splits"][k - 1]
        k = 2 * k if bins[j] <= t else 2 * k + 1
    return k - (1 << tree["depth"])


def reference_update(schema: nb.Schema, tree: dict[str, Any], rows: Sequence[Sequence[float]],
                     labels: Sequence[str]) -> dict[str, Any]:
    """The plaintext online update: the same splits, the new records' class counts added to their leaves, every
    leaf's majority class recomputed (ties to the lower class)."""
    counts = [list(c) for c in tree["counts"]]
    for row, y in zip(rows, labels, strict=True):
        counts[_leaf_index(schema, tree, row)][schema.class_index(y)] += 1
    return dict(tree, counts=counts, labels=[_majority(c) for c in counts])


def reference_predict(schema: nb.Schema, tree: dict[str, Any], row: Sequence[float]) -> int:
    return tree["labels"][_leaf_index(schema, tree, row)]
