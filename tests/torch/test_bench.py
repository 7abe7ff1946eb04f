"""``twofold bench torch`` at a tiny size: both modes measured in one run, same accuracy, identical weights."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from twofold.bench import torch_bench


def test_bench_torch_small(home):
    result = torch_bench.run("cpu", synthetic_rows=2000, features=32, epochs=1, repeats=1,
                              digits_epochs=2, keystream_mib=1)
    assert result["benchmark"] == "torch" and result["device"] == "cpu"
    rows = {(r["dataset"], r["mode"]) for r in result["results"]}
    assert rows == {(d, m) for d in ("digits", "synthetic") for m in ("plaintext", "encrypted")}
    assert all(r["seconds"] > 0 for r in result["results"])
    assert result["identical_weights"] == {"digits": True, "synthetic": True}
    assert result["accuracy_difference"] == {"digits": 0.0, "synthetic": 0.0}
    assert result["overhead_ratio"] > 0 and result["keystream_gb_per_s"] > 0
    assert result["keystream_impl"] == "cryptography"
