"""Shared fixtures: fast keystores, small tables and a CLI runner that uses the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from twofold.crypto.kdf import Argon2Params
from twofold.keys.keystore import Keystore

PASSPHRASE = "test passphrase 123"
FAST_KDF = Argon2Params(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "keystore", PASSPHRASE, FAST_KDF)


@pytest.fixture
def table() -> pa.Table:
    return pa.table({
        "age": pa.array([34, 51, None, 29, 62, 47, 38], pa.int64()),
        "weight": [71.5, 88.25, 64.0, None, 90.5, 77.75, 69.0],
        "city": ["Porto", "Braga", "", "Lisboa", "Évora", "Faro", "Coimbra"],
        "label": [0, 1, 0, 1, 1, 0, 1],
    })


def run_cli(*args: str, env: dict[str, str] | None = None, input_text: str | None = None,
            module: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``twofold`` command (or ``python -m twofold``) as a user would."""
    full_env = {**os.environ, "TWOFOLD_PASSPHRASE": PASSPHRASE, **(env or {})}
    command = [sys.executable, "-m", "twofold"] if module else [str(Path(sys.executable).parent / "twofold")]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, input=input_text,
                          timeout=300, check=False)
