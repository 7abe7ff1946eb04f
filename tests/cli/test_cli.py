"""The CLI as a user runs it: real processes, one-line errors, exit codes."""

from __future__ import annotations

import json

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from twofold.errors import ConfigError, InputError, IntegrityError, KeyAccessError

from ..conftest import PASSPHRASE, run_cli


@pytest.fixture
def keystore_dir(tmp_path):
    result = run_cli("keys", "init", "--keystore", str(tmp_path / "ks"), "--kdf-memory-mib", "8")
    assert result.returncode == 0, result.stderr
    return tmp_path / "ks"


@pytest.fixture
def csv_path(table, tmp_path):
    pacsv.write_csv(table, tmp_path / "in.csv")
    return tmp_path / "in.csv"


def _one_line_error(result, code):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("twofold: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_encrypt_inspect_verify_decrypt(keystore_dir, csv_path, tmp_path):
    ds = tmp_path / "ds"
    result = run_cli("encrypt", str(csv_path), "--out", str(ds), "--keystore", str(keystore_dir),
                     "--label", "label", "--rows-per-file", "3")
    assert result.returncode == 0, result.stderr
    assert "encrypted 7 rows into 3 file(s)" in result.stderr

    meta = json.loads(run_cli("inspect", str(ds), "--json", env={"TWOFOLD_PASSPHRASE": ""}).stdout)
    assert meta["num_rows"] == 7 and meta["label"] == "label"
    assert "unauthenticated" in run_cli("inspect", str(ds)).stdout

    assert run_cli("verify", str(ds), "--keystore", str(keystore_dir)).returncode == 0
    for suffix in ("csv", "parquet"):
        out = tmp_path / f"out.{suffix}"
        result = run_cli("decrypt", str(ds), "--out", str(out), "--keystore", str(keystore_dir))
        assert result.returncode == 0, result.stderr
        assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert pacsv.read_csv(tmp_path / "out.csv").equals(pacsv.read_csv(csv_path))
    assert pq.read_table(tmp_path / "out.parquet").equals(pacsv.read_csv(csv_path))
    _one_line_error(run_cli("decrypt", str(ds), "--out", str(tmp_path / "out.csv"), "--keystore",
                            str(keystore_dir)), ConfigError.exit_code)


def test_python_dash_m_is_the_same_command(keystore_dir):
    assert run_cli("keys", "list", "--keystore", str(keystore_dir), module=True).stdout == \
        run_cli("keys", "list", "--keystore", str(keystore_dir)).stdout
    assert "version   1" in run_cli("keys", "list", "--keystore", str(keystore_dir)).stdout


def test_tampered_dataset_fails_verify_with_one_line(keystore_dir, csv_path, tmp_path):
    ds = tmp_path / "ds"
    run_cli("encrypt", str(csv_path), "--out", str(ds), "--keystore", str(keystore_dir), "--rows-per-file", "3")
    part = ds / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    _one_line_error(run_cli("verify", str(ds), "--keystore", str(keystore_dir)), IntegrityError.exit_code)
    debug = run_cli("--debug", "verify", str(ds), "--keystore", str(keystore_dir))
    assert debug.returncode == IntegrityError.exit_code and "Traceback" in debug.stderr


def test_wrong_passphrase_and_missing_passphrase(keystore_dir, csv_path, tmp_path):
    result = run_cli("encrypt", str(csv_path), "--out", str(tmp_path / "ds"), "--keystore", str(keystore_dir),
                     env={"TWOFOLD_PASSPHRASE": "wrong passphrase!"})
    _one_line_error(result, KeyAccessError.exit_code)
    assert "wrong passphrase!" not in result.stderr and PASSPHRASE not in result.stderr
    assert not (tmp_path / "ds").exists()
    _one_line_error(run_cli("keys", "rotate", "--keystore", str(keystore_dir), env={"TWOFOLD_PASSPHRASE": ""}),
                    ConfigError.exit_code)


def test_bad_inputs_exit_non_zero_with_one_line(keystore_dir, tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    result = run_cli("encrypt", str(tmp_path / "ragged.csv"), "--out", str(tmp_path / "ds"), "--keystore",
                     str(keystore_dir))
    _one_line_error(result, InputError.exit_code)
    (tmp_path / "empty.csv").write_text("")
    _one_line_error(run_cli("encrypt", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "ds"),
                            "--keystore", str(keystore_dir)), InputError.exit_code)
    _one_line_error(run_cli("inspect", str(tmp_path)), InputError.exit_code)
    _one_line_error(run_cli("verify", str(tmp_path / "nothing"), "--keystore", str(tmp_path / "no-ks")),
                    ConfigError.exit_code)
    assert run_cli("encrypt").returncode == 2  # usage error


def test_rotate_rewrap_retire(keystore_dir, csv_path, tmp_path):
    ds = tmp_path / "ds"
    run_cli("encrypt", str(csv_path), "--out", str(ds), "--keystore", str(keystore_dir))
    result = run_cli("keys", "rotate", "--keystore", str(keystore_dir), "--rewrap", str(ds))
    assert result.returncode == 0, result.stderr
    assert "version 2 is now active" in result.stderr and "re-wrapped" in result.stderr
    assert run_cli("keys", "retire", "--keystore", str(keystore_dir), "1").returncode == 0
    assert run_cli("verify", str(ds), "--keystore", str(keystore_dir)).returncode == 0
    listing = run_cli("keys", "list", "--keystore", str(keystore_dir)).stdout
    assert "retired" in listing and "active" in listing


def test_bench_encrypt_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "encrypt", "--rows", "20000", "--cols", "4", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "encrypt"
    assert {r["mode"] for r in report["results"]} == {"plain", "encrypted"}
    assert all(r["read_mb_per_s"] > 0 and r["write_mb_per_s"] > 0 for r in report["results"])
