"""``twofold bench kbs``: attestation + key-release latency and throughput against a broker on loopback."""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from twofold.bench.common import machine
from twofold.crypto.kdf import Argon2Params
from twofold.crypto.mac import mac_context
from twofold.data import EncryptedDataset
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.measure import current_measurement
from twofold.kbs.authoring import write_policy
from twofold.keys.keystore import PASSPHRASE_ENV, Keystore
from twofold.services import start_kbs

PASSPHRASE = "benchmark passphrase"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(attestations: int = 300, concurrency: int = 8) -> dict[str, Any]:
    """Each grant is a full cycle: challenge, evidence, token, and one key released to the enclave key."""
    with tempfile.TemporaryDirectory(prefix="twofold-bench-kbs-") as tmp:
        root = Path(tmp)
        store = Keystore.create(root / "ks", PASSPHRASE, Argon2Params(memory_kib=8192, iterations=1))
        dataset = EncryptedDataset.write(pa.table({"x": [1, 2]}), root / "ds", store)
        write_policy(root / "policy.json", [dataset.dataset_id])
        item = (dataset.manifest.wrapped_mac_key, mac_context(dataset.dataset_id))
        identity = store.broker_identity()
        measurement = current_measurement()
        attester = SimulationAttester(load_or_create_platform_key())
        # every attestation comes from this one address: lift the per-address rate limit, so that the
        # benchmark measures the broker's work rather than its flood protection
        with start_kbs(root / "ks", root / "policy.json", root / "audit.jsonl", env={PASSPHRASE_ENV: PASSPHRASE},
                       extra=("--auth-rate", "1000000", "--auth-burst", "1000000")) as kbs:

            def grant() -> float:
                start = time.perf_counter()
                session = BrokerSession(kbs.address, measurement,
                                        lambda nonce, pub, config: attester.evidence(measurement, nonce, pub, config),
                                        identity)
                session.attest()
                session.unwrap(*item)
                return time.perf_counter() - start

            for _ in range(10):  # warm-up
                grant()
            latencies = [grant() for _ in range(attestations)]
            began = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(lambda _: grant(), range(attestations)))
            elapsed = time.perf_counter() - began
    return {
        "benchmark": "kbs",
        "backend": "simulation",
        "attestations": attestations,
        "concurrency": concurrency,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "grants_per_s": attestations / elapsed,
        "machine": machine(),
    }
