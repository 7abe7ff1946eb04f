"""``twofold train`` as a user runs it: hyper-parameters checked against the catalog, and a quiet console."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from twofold.errors import ConfigError

from ..conftest import run_cli

# What the JVM, Spark, Hadoop and netlib print on a bare start (netlib where libblas is missing), kept for --debug.
NOISE = {
    "jdk": "WARNING: Using incubator modules",
    "spark": "Setting default log level",
    "hadoop": "NativeCodeLoader",
    "netlib": "JNI_OnLoad: dlopen",
}


@pytest.fixture
def keystore_dir(tmp_path):
    assert run_cli("keys", "init", "--keystore", str(tmp_path / "ks"), "--kdf-memory-mib", "8").returncode == 0
    return tmp_path / "ks"


def test_train_refuses_parameters_the_algorithm_does_not_take(keystore_dir, tmp_path):
    for algorithm, option in (("linreg", "--max-iter"), ("linreg", "--tol"), ("pca", "--seed"),
                              ("naive_bayes", "--no-fit-intercept")):
        value = [] if option.startswith("--no-") else ["3"]
        result = run_cli("train", str(tmp_path / "any.enc"), "--out", str(tmp_path / "m.model"), "--algorithm",
                         algorithm, option, *value, "--keystore", str(keystore_dir))
        assert result.returncode == ConfigError.exit_code, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
        assert f"{algorithm} does not take {option.replace('--no-', '--')}" in result.stderr


@pytest.mark.spark
def test_spark_console_is_quiet_unless_debug(keystore_dir, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 3))
    pacsv.write_csv(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": X @ [1.0, -2.0, 0.5]}),
                    tmp_path / "d.csv")
    dataset = tmp_path / "d.enc"
    assert run_cli("encrypt", str(tmp_path / "d.csv"), "--out", str(dataset), "--keystore", str(keystore_dir),
                   "--label", "label", "--rows-per-file", "150").returncode == 0
    env = {"TWOFOLD_HOME": str(tmp_path / "home")}

    def train(*args: str) -> object:
        out = tmp_path / f"m{len(list(tmp_path.glob('*.model')))}.model"
        return run_cli(*args[:-2], "train", str(dataset), "--out", str(out), "--algorithm", "linreg",
                       "--mode", "whole", "--keystore", str(keystore_dir), "--master", "local[1]", *args[-2:], env=env)

    quiet = train("--label", "label")  # whole mode: MLlib's BLAS runs too
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("enclave: SIMULATION") and lines[1].startswith("trained linreg in whole mode")
    assert len(lines) == 2, quiet.stderr
    # --debug: the same start, stopped early by a column the dataset lacks, shows what Spark prints.
    loud = train("--debug", "--features", "nope")
    assert loud.returncode == ConfigError.exit_code and "no column 'nope'" in loud.stderr
    assert {name for name, text in NOISE.items() if text in loud.stderr} >= {"jdk", "spark", "hadoop"}, loud.stderr
