"""The services a Spark job needs: the owner's key broker (embedded on loopback, or a running one) and the
host's enclave. Everything started here is stopped here, by PID."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from twofold.crypto.broker_identity import BrokerIdentity
from twofold.enclave.broker_client import BrokerAddress
from twofold.errors import ConfigError
from twofold.kbs.authoring import resolve_measurements, write_policy
from twofold.keys.keystore import PASSPHRASE_ENV, Keystore
from twofold.services import start_kbs
from twofold.spark.host_enclave import EnclaveConfig, ensure_enclave, stop_enclave


@dataclass
class JobServices:
    enclave: EnclaveConfig
    workdir: Path

    @property
    def kbs_url(self) -> str:
        return self.enclave.kbs_url

    @property
    def broker(self) -> BrokerAddress:
        return self.enclave.broker


@contextlib.contextmanager
def job_services(datasets: Sequence[str], *, mode: str = "partitioned", release: str | None = None,
                 keystore_dir: Path | None = None, passphrase: str | None = None, keystore: Keystore | None = None,
                 kbs_url: str | None = None, broker_identity: Path | None = None, cache_mib: int = 4096,
                 extra_measurements: Sequence[str] = ()) -> Iterator[JobServices]:
    """Start (or reach) a key broker and this host's enclave for a job over ``datasets`` in ``mode``.

    With ``kbs_url`` the owner's running broker is used, with the identity she issued for it
    (``broker_identity``); otherwise one is embedded on loopback from the owner's keystore, with a policy that
    lets only the code of ``mode`` (the partitioned TCB, or whole mode's executor code; ``both`` for a session
    that runs both) open the datasets, and only the ``release`` of the job leave the enclave (``sealed`` or
    ``statistics``; None: both, for a session that runs either). ``keystore``: the owner's keystore if the
    caller has unlocked it already (it names the broker's identity without a second passphrase derivation).
    """
    if mode not in ("partitioned", "whole", "both"):
        raise ConfigError("mode must be 'partitioned', 'whole' or 'both'")
    root = Path(tempfile.mkdtemp(prefix="twofold-job-"))
    kbs = None
    config: EnclaveConfig | None = None
    try:
        if kbs_url is None:
            if keystore_dir is None or passphrase is None:
                raise ValueError("an embedded key broker needs the owner's keystore and passphrase")
            measurements = {"partitioned": "current", "whole": "whole", "both": "both"}[mode]
            allowed = ",".join([*resolve_measurements(measurements), *extra_measurements])
            releases = [release] if release else ["sealed", "statistics"]
            write_policy(root / "policy.json", list(datasets), allowed, release=releases)
            identity = (keystore or Keystore.open(keystore_dir, passphrase)).broker_identity()
            kbs = start_kbs(keystore_dir, root / "policy.json", root / "kbs-audit.jsonl",
                            env={PASSPHRASE_ENV: passphrase}, log_path=root / "kbs.log")
            kbs_url = kbs.address
        elif broker_identity is None:
            raise ConfigError("a running key broker needs its identity, as its owner issued it (--broker-identity)")
        else:
            identity = BrokerIdentity.load(broker_identity)
        config = EnclaveConfig(str(root / "enclave.sock"), kbs_url, identity.to_json(), cache_mib=cache_mib)
        if mode != "whole":  # whole mode's executors attest themselves; no enclave process runs
            ensure_enclave(config)
        yield JobServices(config, root)
    finally:
        if config is not None:
            stop_enclave(config)
        if kbs is not None:
            kbs.stop()
        shutil.rmtree(root, ignore_errors=True)
