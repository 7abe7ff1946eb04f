"""What crosses the enclave boundary during a fit, and what happens when things fail mid-fit."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

import twofold.enclave.runtime  # noqa: F401 - registers every ecall
from twofold.enclave.kernels import arrays
from twofold.enclave.registry import REGISTRY
from twofold.errors import IntegrityError, ProtocolError
from twofold.spark import LogisticRegression, encrypted_files

pytestmark = pytest.mark.spark


def _fit(spark_env, name, release, path=None, progress=None, **params):
    services = spark_env["services"]
    estimator = LogisticRegression(release=release, **params).setEnclave(services.enclave)
    if progress:
        estimator.setProgress(progress)
    return estimator.fit(encrypted_files(spark_env["spark"], path or spark_env["datasets"][name].path))


def _traced_fit(spark_env, name, release):
    trace = spark_env["trace"]
    trace.write_text("")
    _fit(spark_env, name, release, maxIter=4, tol=0.0)
    return [json.loads(line) for line in trace.read_text().splitlines()]


def _values(table) -> set[bytes]:
    out = set()
    for column in table.column_names:
        for value in table.column(column).to_numpy()[:300]:
            if float(value) != round(float(value)):  # labels 0/1 and counts occur naturally in statistics
                out.add(struct.pack("<d", float(value)))
    return out


@pytest.mark.parametrize("release", ["statistics", "sealed"])
def test_boundary_messages_follow_the_schema_and_not_the_data(spark_env, release):
    runs = {name: _traced_fit(spark_env, name, release) for name in ("classification", "classification_b")}
    for name, entries in runs.items():
        plaintext = _values(spark_env["tables"][name])
        for entry in entries:
            reply = msgpack.unpackb(base64.b64decode(entry["reply"]), raw=False)
            assert reply["ok"], reply
            assert set(reply["result"]) == set(REGISTRY[entry["call"]].result), entry["call"]
            raw = base64.b64decode(entry["reply"])
            leaked = [v for v in plaintext if v in raw]
            assert not leaked, (entry["call"], len(leaked))
            if release == "sealed" and entry["call"] in ("fit_stats", "fit_combine", "fit_init", "fit_finalize"):
                for value in reply["result"].values():  # ciphertext only: nothing parses as statistics
                    if isinstance(value, bytes) and value:
                        with pytest.raises(ProtocolError):
                            arrays.unpack(value)
    shapes = {name: sorted((e["call"], len(base64.b64decode(e["reply"]))) for e in entries)
              for name, entries in runs.items()}
    assert shapes["classification"] == shapes["classification_b"]  # sizes do not depend on the values


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _enclave_pid(spark_env) -> int:
    return int(Path(spark_env["services"].enclave.pid_path).read_text())


def test_enclave_killed_mid_fit_restarts_and_gives_the_same_model(spark_env):
    reference = _fit(spark_env, "classification", "statistics", maxIter=6, tol=0.0)
    before = _enclave_pid(spark_env)

    def kill_at_second_pass(_, calls=[0]):  # noqa: B006 - a counter local to this test
        calls[0] += 1
        if calls[0] == 2:
            os.kill(_enclave_pid(spark_env), signal.SIGKILL)

    again = _fit(spark_env, "classification", "statistics", progress=kill_at_second_pass, maxIter=6, tol=0.0)
    assert _enclave_pid(spark_env) != before  # a new enclave was started (and attested)
    np.testing.assert_allclose(again.coefficients, reference.coefficients, rtol=1e-10, atol=1e-12)


def test_spark_task_killed_mid_fit_is_retried_and_the_model_is_unchanged(spark_env, owner):
    reference = _fit(spark_env, "classification", "sealed", maxIter=8, tol=0.0)
    stop = threading.Event()
    killed = []

    def python_workers() -> list[int]:
        """Spark's Python workers: processes forked by a pyspark.daemon (they share its command line)."""
        found = subprocess.run(["pgrep", "-f", "pyspark.daemon"], capture_output=True, text=True).stdout.split()
        pids = {int(p) for p in found}
        return [p for p in pids if _parent(p) in pids]

    def kill_workers():
        while not stop.is_set():
            targets = python_workers()
            if targets and len(killed) < 2:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(targets[0], signal.SIGKILL)
                    killed.append(targets[0])
            time.sleep(0.3)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    try:
        again = _fit(spark_env, "classification", "sealed", maxIter=8, tol=0.0)
    finally:
        stop.set()
        killer.join()
    assert killed
    assert again.passes == reference.passes
    np.testing.assert_allclose(again.model_file.open_arrays(owner)["coefficients"],
                               reference.model_file.open_arrays(owner)["coefficients"], rtol=1e-10, atol=1e-12)


def test_dataset_tampered_mid_job_fails_with_an_integrity_error(spark_env, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(spark_env["datasets"]["classification"].path, copy)

    def tamper_and_restart(_, calls=[0]):  # noqa: B006
        calls[0] += 1
        if calls[0] == 2:
            part = copy / "part-00001.parquet"
            data = bytearray(part.read_bytes())
            data[len(data) // 2] ^= 0x55
            part.write_bytes(bytes(data))
            os.kill(_enclave_pid(spark_env), signal.SIGKILL)  # forces the partition to be read again

    with pytest.raises(IntegrityError):
        _fit(spark_env, "classification", "statistics", path=copy, progress=tamper_and_restart, maxIter=6, tol=0.0)
