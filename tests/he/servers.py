"""Helpers for tests that run MU and SU as real `twofold he serve` processes on loopback."""

from __future__ import annotations

import csv
import json
import random
import socket
import subprocess
from pathlib import Path

from twofold.he.client import read_csv
from twofold.he.models import nb
from twofold.services import start_he

from ..conftest import run_cli

OWNERS = ("olga", "omar", "otto")
CLIENTS = ("alice", "carl")
FEATURES = ["a", "b", "c", "d"]


def write_data(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as h:
        w = csv.writer(h)
        w.writerow([*FEATURES, "label"])
        for _ in range(n):
            y = rng.choice(["no", "yes"])
            shift = 1.2 if y == "yes" else 0.0
            w.writerow([round(rng.gauss(shift + 0.2 * j, 1.0), 4) for j in range(len(FEATURES))] + [y])


def he(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("he", *args, module=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `twofold he serve` child process (the same launcher as production), stopped by its own PID."""

    def __init__(self, system: Path, role: str, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.service = start_he(system, role, port, ("--threads", "1", *extra), timeout=30)
        self.proc = self.service.process
        self.address = self.service.address
        self.port = int(self.address.rsplit(":", 1)[1])

    def signal(self, signum: int) -> None:
        """Send a signal to this server by its PID (SIGSTOP freezes it, SIGCONT thaws it, SIGKILL kills it)."""
        self.service.signal(signum)

    def stop(self) -> None:
        self.service.stop()


def make_system(root: Path, extra_owners: tuple[str, ...] = ()) -> Path:
    """A 512-bit HE system with owners, clients, data files and a public schema under ``root``."""
    sysdir = root / "system"
    assert he("init", "--dir", str(sysdir), "--key-bits", "512", "--insecure-small-keys").returncode == 0
    for name, role in [*((o, "owner") for o in (*OWNERS, *extra_owners)), *((c, "client") for c in CLIENTS)]:
        result = he("enroll", "--system", str(sysdir), "--name", name, "--role", role)
        assert result.returncode == 0, result.stderr
    for seed, (name, n) in enumerate((("olga", 40), ("omar", 30), ("otto", 20), ("queries", 25)), start=1):
        write_data(root / f"{name}.csv", n, seed)
    result = he("schema", "--system", str(sysdir), str(root / "olga.csv"), "--label", "label", "--bins", "4")
    assert result.returncode == 0, result.stderr
    assert "insecure 512-bit test keys" in result.stderr
    return sysdir


def reference_predictions(system: Path, files: list[Path], queries: Path) -> list[list[float]]:
    schema = nb.Schema.from_dict(json.loads((system / "public" / "schema.json").read_text()))
    rows, labels = [], []
    for f in files:
        r, y = read_csv(f, schema.features, "label")
        rows += r
        labels += y
    counts = nb.plaintext_counts(schema, rows, labels)
    q, _ = read_csv(queries, schema.features, "label")
    return [nb.reference_scores(schema, counts, schema.bin_row(r)) for r in q], schema


def check_predictions(stdout: str, refs, schema) -> None:
    got = stdout.split()
    assert len(got) == len(refs)
    for label, scores in zip(got, refs, strict=True):
        assert scores[schema.class_index(label)] >= max(scores) - 1e-3


