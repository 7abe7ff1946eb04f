"""`twofold bench spark` end to end on a small table: every mode, the JSON the issue names, same answers."""

from __future__ import annotations

import json

import pytest

from ..conftest import run_cli

pytestmark = pytest.mark.spark


def test_bench_spark_small(tmp_path):
    out = tmp_path / "spark.json"
    result = run_cli("bench", "spark", "--rows", "4000", "--cols", "4", "--algorithms", "linreg,naive_bayes",
                     "--partitions", "2", "--repeats", "2", "--warmup-rounds", "1", "--master", "local[2]",
                     "--json", str(out),
                     env={"TWOFOLD_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert (doc["benchmark"], doc["rows"], doc["cols"], doc["partitions"], doc["repeats"], doc["warmup_rounds"]) \
        == ("spark", 4000, 4, 2, 2, 1)
    modes = ("vanilla", "whole", "partitioned-statistics", "partitioned-sealed")
    for algorithm in ("linreg", "naive_bayes"):
        rows = {r["mode"]: r for r in doc["results"] if r["algorithm"] == algorithm}
        assert set(rows) == set(modes)
        vanilla = rows["vanilla"]
        assert vanilla["ratio_to_vanilla"] == 1.0
        assert vanilla["seconds"] == pytest.approx(vanilla["load_seconds"] + vanilla["fit_seconds"])
        assert vanilla["load_path"] in ("spark-reader", "arrow")
        assert vanilla["load_seconds"] == min(vanilla["load_seconds_spark_reader"], vanilla["load_seconds_arrow"])
        for row in rows.values():
            # 2 rounds asked; a fit this short runs twice as many, and reports the fastest
            assert len(row["rounds_seconds"]) == 4 and row["seconds"] == min(row["rounds_seconds"])
            assert len(row["warmup_seconds"]) == 1  # the untimed round is recorded apart
            assert row["ratio_to_vanilla"] == pytest.approx(row["seconds"] / vanilla["seconds"])
            assert row["ratio_to_vanilla_fit"] == pytest.approx(row["seconds"] / vanilla["fit_seconds"])
            assert row["metric"] == pytest.approx(vanilla["metric"], rel=1e-3, abs=5e-3)  # same model quality
        assert rows["whole"]["metric"] == vanilla["metric"]  # the same MLlib fit on the same rows
        assert rows["partitioned-sealed"]["passes"] >= 1
