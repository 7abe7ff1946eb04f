"""`twofold bench all` and `twofold report` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import run_cli


def test_bench_all_subset_and_report(tmp_path):
    out = tmp_path / "all.json"
    result = run_cli("bench", "all", "--quick", "--only", "encrypt,kbs", "--json", str(out),
                     env={"TWOFOLD_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "all" and set(doc["runs"]) == {"encrypt", "kbs"} and not doc["errors"]
    assert doc["machine"]["cpus"] >= 1
    assert doc["runs"]["kbs"]["grants_per_s"] > 0 and doc["runs"]["encrypt"]["read_ratio"] > 0

    spark = {"benchmark": "spark", "rows": 1000, "cols": 3, "partitions": 2, "enclave": "simulation", "results": [
        {"algorithm": "logreg", "mode": mode, "seconds": s, "metric_name": "accuracy", "metric": 0.9,
         "ratio_to_vanilla": s / 3.0, "ratio_to_vanilla_fit": s / 2.0,
         **({"passes": 3, "wall_seconds": s, "load_seconds": 0.1, "stats_ecalls_seconds": 0.2,
             "update_seconds": 0.01} if mode.startswith("partitioned")
            else {"load_seconds": 1.0, "fit_seconds": s - 1})}
        for mode, s in [("vanilla", 2.0), ("whole", 2.2), ("partitioned-statistics", 1.5),
                        ("partitioned-sealed", 1.6)]]}
    doc["runs"]["spark"] = spark  # a rendering fixture: the report must lay out every section it is given
    doc["runs"]["dp_sgd"] = json.loads(Path(__file__).resolve().parents[2].joinpath(
        "benchmarks", "results", "dp_sgd.json").read_text())  # the committed run, as a fixture
    out.write_text(json.dumps(doc))
    result = run_cli("report", str(out), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report" / "benchmarks.md").read_text()
    for heading in ("## Encrypted datasets", "## Attestation and key release", "## Confidential Spark MLlib"):
        assert heading in text
    assert "| logreg | partitioned-sealed | 1.60 | 0.10 | - | 0.53x | 0.80x |" in text
    assert "| logreg | whole | 2.20 | 1.00 | 1.20 | 0.73x | 1.10x |" in text
    assert "Target partitioned <= 1.00x vanilla: met by 2 of 2 runs (largest 0.53x)." in text
    assert "Target whole <= 1.10x vanilla: met by 1 of 1 runs (largest 0.73x)." in text
    assert "own work is in its load: +0.00 to +0.00 s" in text and "fit by +0.20 to +0.20 s" in text
    assert (tmp_path / "report" / "spark.png").stat().st_size > 1000
    assert "## DP-SGD on encrypted data (output privacy)" in text
    dp = doc["runs"]["dp_sgd"]["dp_sgd"]
    assert f"| DP-SGD | {dp['accuracy_mean']:.4f} | {dp['accuracy_min']:.4f} |" in text


def test_report_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    result = run_cli("report", str(tmp_path / "x.json"), "--out", str(tmp_path / "r"))
    assert result.returncode != 0 and "not a twofold benchmark" in result.stderr
