"""The services a Spark job needs: the owner's key broker (embedded on loopback, or a running one) and the
host's enclave. Everything started here is stopped here, by PID."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from twofold.kbs.authoring import resolve_measurements, write_policy
from twofold.keys.keystore import PASSPHRASE_ENV
from twofold.services import start_kbs
from twofold.spark.host_enclave import EnclaveConfig, ensure_enclave, stop_enclave


@dataclass
class JobServices:
    enclave: EnclaveConfig
    workdir: Path

    @property
    def kbs_url(self) -> str:
        return self.enclave.kbs_url


@contextlib.contextmanager
def job_services(datasets: Sequence[str], *, keystore_dir: Path | None = None, passphrase: str | None = None,
                 kbs_url: str | None = None, cache_mib: int = 4096,
                 extra_measurements: Sequence[str] = ()) -> Iterator[JobServices]:
    """Start (or reach) a key broker and this host's enclave for a job over ``datasets``.

    With ``kbs_url`` the owner's running broker is used; otherwise one is embedded on loopback from the owner's
    keystore with a policy that lets this installation's code (partitioned TCB and whole mode) open the datasets.
    """
    root = Path(tempfile.mkdtemp(prefix="twofold-job-"))
    kbs = None
    config: EnclaveConfig | None = None
    try:
        if kbs_url is None:
            if keystore_dir is None or passphrase is None:
                raise ValueError("an embedded key broker needs the owner's keystore and passphrase")
            allowed = ",".join([*resolve_measurements("both"), *extra_measurements])
            write_policy(root / "policy.json", list(datasets), allowed)
            kbs = start_kbs(keystore_dir, root / "policy.json", root / "kbs-audit.jsonl",
                            env={PASSPHRASE_ENV: passphrase}, log_path=root / "kbs.log")
            kbs_url = kbs.address
        config = EnclaveConfig(str(root / "enclave.sock"), kbs_url, cache_mib=cache_mib)
        ensure_enclave(config)
        yield JobServices(config, root)
    finally:
        if config is not None:
            stop_enclave(config)
        if kbs is not None:
            kbs.stop()
        shutil.rmtree(root, ignore_errors=True)
