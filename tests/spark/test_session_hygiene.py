"""What a twofold Spark session keeps from Spark: the owner's passphrase never reaches the JVM or the Python
workers, and a whole-mode session encrypts Spark's own files and traffic.

Each test starts a fresh interpreter (a SparkSession is per process, and the environment a JVM inherits is fixed
when it starts) and reads back one JSON line of what it saw.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from twofold.keys.keystore import PASSPHRASE_ENV

pytestmark = pytest.mark.spark

CONF_KEYS = ("spark.io.encryption.enabled", "spark.network.crypto.enabled", "spark.authenticate",
             "spark.network.crypto.cipher", "spark.network.crypto.saslFallback")
# argv: whole_mode (0/1), spark.local.dir, the marker that the shuffled rows carry, the settings to read back.
SCRIPT = r"""
import json, os, pathlib, sys
from pyspark.sql import functions as F
from twofold.spark.session import get_spark

whole, local_dir, marker = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
spark = get_spark("local[1]", "hygiene", whole_mode=whole, **{"spark.local.dir": local_dir,
                                                            # rows as written, and kept until we look
                                                            "spark.shuffle.compress": "false",
                                                            "spark.cleaner.referenceTracking": "false"})
sc = spark.sparkContext
name = "TWOFOLD_PASSPHRASE"
worker = sc.parallelize([0], 1).map(lambda _: os.environ.get(name)).collect()[0]
rows = spark.range(1000).withColumn("s", F.concat(F.lit(marker), F.col("id").cast("string")))
grouped = rows.repartition(4).groupBy(F.col("id") % 7).agg(F.count("*"), F.max("s"))  # the rows keep "s"
counts = sorted(tuple(r)[:2] for r in grouped.collect())
files = [p for p in pathlib.Path(local_dir).rglob("*") if p.is_file()]
shuffle_files = [p for p in files if p.name.startswith("shuffle_")]
conf = sc.getConf()
try:  # the running session asked for again, now for whole mode
    get_spark("local[1]", "hygiene", whole_mode=True)
    again = "reused"
except Exception as exc:
    again = type(exc).__name__
print("RESULT " + json.dumps({
    "driver": os.environ.get(name), "worker": worker, "jvm": sc._jvm.System.getenv(name),
    "conf": {key: conf.get(key) for key in sys.argv[4:]}, "counts": counts, "again": again,
    "shuffle_files": len(shuffle_files), "marker_on_disk": any(marker.encode() in p.read_bytes() for p in files),
}), flush=True)
spark.stop()
"""


def _run(tmp_path, whole: bool) -> dict:
    marker = f"plaintext-{secrets.token_hex(16)}-"
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_DIRS"}
    env[PASSPHRASE_ENV] = "the owner's passphrase"
    local_dir = tmp_path / "spark-local"
    local_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", SCRIPT, "1" if whole else "0", str(local_dir), marker, *CONF_KEYS],
                          env=env, capture_output=True, text=True, timeout=240, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"status {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _counts_are_right(counts: list) -> bool:
    return sorted(key for key, _ in counts) == list(range(7)) and sum(n for _, n in counts) == 1000


def test_the_passphrase_reaches_neither_the_jvm_nor_the_workers(tmp_path):
    seen = _run(tmp_path, whole=False)
    assert seen["driver"] is None and seen["worker"] is None and seen["jvm"] is None
    # The control for the whole-mode test below: without Spark's encryption, shuffled rows sit on disk in clear.
    assert _counts_are_right(seen["counts"]) and seen["shuffle_files"] > 0 and seen["marker_on_disk"]
    assert seen["again"] == "ConfigError"  # whole mode refuses a session that started without its encryption


def test_whole_mode_encrypts_sparks_files_and_traffic(tmp_path):
    seen = _run(tmp_path, whole=True)
    for key in ("spark.io.encryption.enabled", "spark.network.crypto.enabled", "spark.authenticate"):
        assert seen["conf"][key] == "true", key
    assert seen["conf"]["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"
    assert seen["conf"]["spark.network.crypto.saslFallback"] == "false"
    assert _counts_are_right(seen["counts"])  # a shuffle works with all of it on (local mode: no secret needed)
    assert seen["shuffle_files"] > 0 and not seen["marker_on_disk"]  # the same rows, now encrypted on disk
    assert seen["driver"] is None and seen["worker"] is None
    assert seen["again"] == "reused"
