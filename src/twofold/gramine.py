"""A Gramine manifest for the enclave process on SGX: what ``twofold gramine manifest`` writes.

Under Gramine, MRENCLAVE covers every trusted file: the Python interpreter, its standard library, the installed
packages and twofold's TCB files (the measured set of :func:`twofold.enclave.measure.tcb_files`). The enclave runs
its minimal entry point with ``--backend sgx``, attests with DCAP (``sgx.remote_attestation = "dcap"``), and debug
mode is off. Datasets are read as allowed (untrusted) files: they are ciphertext, authenticated by the enclave.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

from twofold.enclave.measure import PACKAGE_ROOT, tcb_files
from twofold.errors import ConfigError
from twofold.services import ENCLAVE_ENTRY, ENCLAVE_ENV


def _toml(value: object) -> str:
    """A TOML value for strings, booleans, integers and lists of strings (JSON's syntax is TOML's for these)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def manifest(socket: str, kbs_url: str, broker_identity: str, data_dirs: list[str], *, enclave_size: str = "8G",
             max_threads: int = 64, cache_mib: int = 4096) -> str:
    """The manifest's TOML text for an enclave serving ``socket``, attesting to ``kbs_url``."""
    if not data_dirs:
        raise ConfigError("name the dataset directories the enclave reads (--data)")
    python = Path(sys.executable).resolve()
    paths = sysconfig.get_paths()
    libraries = sorted({paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]})
    tcb = [f"file:{p}" for p in tcb_files()]
    settings = {
        "libos.entrypoint": str(python),
        "loader.entrypoint.uri": "file:{{ gramine.libos }}",
        "loader.argv": [str(python), *ENCLAVE_ENTRY, "--backend", "sgx", "--socket", socket, "--kbs", kbs_url,
                        "--broker-identity", broker_identity, "--cache-mib", str(cache_mib)],
        "loader.env.LANG": "C.UTF-8",
        **{f"loader.env.{name}": value for name, value in ENCLAVE_ENV.items()},
        "sgx.remote_attestation": "dcap",
        "sgx.debug": False,
        "sgx.enclave_size": enclave_size,
        "sgx.max_threads": max_threads,
        "sgx.trusted_files": [f"file:{python}", "file:{{ gramine.runtimedir() }}/",
                              *[f"file:{lib}/" for lib in libraries], f"file:{broker_identity}", *tcb],
        "sgx.allowed_files": [f"file:{Path(d).resolve()}/" for d in data_dirs],
    }
    lines = ["# twofold enclave on Gramine-SGX: render with gramine-manifest, then gramine-sgx-sign.",
             f"# TCB: {len(tcb)} twofold files under {PACKAGE_ROOT}; every trusted file is in MRENCLAVE."]
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
