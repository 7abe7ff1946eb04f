"""The DP-SGD benchmark at a tiny size: both modes per seed, the budget spent, the JSON fields the report reads."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")
pytest.importorskip("sklearn")

from twofold.bench import dp_sgd

pytestmark = pytest.mark.torch


def test_bench_dp_sgd_small():
    result = dp_sgd.run("cpu", epochs=2, seeds=1)
    assert result["benchmark"] == "dp_sgd" and result["accountant"] == "prv"
    assert [r["mode"] for r in result["results"]] == ["non-private", "dp-sgd"]
    assert all(r["seconds"] > 0 and 0 <= r["accuracy"] <= 1 for r in result["results"])
    assert 3.0 - 0.05 <= result["dp_sgd"]["spent_epsilon"] <= 3.0
    assert result["dp_sgd"]["noise_multiplier"] > 0
    assert result["accuracy_ratio"] == pytest.approx(result["dp_sgd"]["accuracy_mean"]
                                                     / result["non_private"]["accuracy_mean"])
    assert result["non_private"]["accuracy_mean"] > 0.5  # two epochs already learn digits
