"""Attesters for real hardware: Linux configfs-tsm in SEV-SNP and TDX guests, Gramine's /dev/attestation on SGX.

Each asks the hardware for a report whose 64-byte REPORT_DATA is
:func:`~twofold.crypto.evidence.hardware_report_data` (the broker's nonce, the enclave's ephemeral key and the
pinned broker identity) and returns it as :class:`~twofold.crypto.evidence.Evidence` for the key broker, which
verifies it (:mod:`twofold.kbs.hardware`). :func:`attester_for` picks one at start; ``auto`` never falls back to
simulation.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
import time
from pathlib import Path

from twofold.crypto.evidence import Evidence, hardware_report_data, launch_binding
from twofold.errors import AttestationError, ConfigError

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
TDX_RTMR3 = Path("/sys/class/misc/tdx_guest/measurements/rtmr3:sha384")  # Linux 6.16+: write a digest to extend
GRAMINE_ROOT = Path("/dev/attestation")
_PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}  # configfs-tsm provider -> twofold backend


def _evidence(backend: str, measurement: str, nonce: str, config: str, report_data: bytes, quote: bytes) -> Evidence:
    return Evidence(backend=backend, measurement=measurement, nonce=nonce, report_data=report_data.hex(),
                    timestamp=time.time(), config=config, quote=base64.b64encode(quote).decode())


class TsmAttester:
    """configfs-tsm (Linux 6.7+): make a report entry, write ``inblob``, read ``outblob`` and ``provider``.

    ``generation`` counts writes to the entry: it must not change between our write and our read, or another
    writer raced us and the report may answer its data. ``entry`` names an entry that already exists (one the
    platform prepared, or a test's directory laid out like configfs-tsm) instead of making and removing one.
    """

    def __init__(self, root: Path = TSM_ROOT, entry: str | None = None, rtmr3: Path = TDX_RTMR3) -> None:
        self.root, self._entry, self._rtmr3 = Path(root), entry, Path(rtmr3)
        self.backend = self._provider_backend()
        self._event_log: tuple[str, ...] | None = None

    def _provider_backend(self) -> str:
        try:
            with self._report_entry() as entry:
                provider = (entry / "provider").read_text().strip()
        except OSError:
            raise ConfigError(f"{self.root} is not a configfs-tsm report directory (no provider)") from None
        if provider not in _PROVIDERS:
            raise ConfigError(f"configfs-tsm provider {provider!r} is not SEV-SNP or TDX")
        return _PROVIDERS[provider]

    def _report_entry(self):
        return _Entry(self.root, self._entry)

    def _bind_rtmr3(self, measurement: str, config: str) -> tuple[str, ...]:
        """On TDX, extend RTMR3 once with the launch binding (if the kernel offers RTMR extension and RTMR3 is
        still fresh); the event log the verifier replays, or () to rely on MRCONFIGID."""
        if self._event_log is not None:
            return self._event_log
        self._event_log = ()
        if self.backend == "tdx" and self._rtmr3.exists():
            binding = launch_binding(measurement, config, 48)
            if self._rtmr3.read_bytes()[:48] == bytes(48):
                self._rtmr3.write_bytes(binding)
                self._event_log = (binding.hex(),)
        return self._event_log

    def evidence(self, measurement: str, nonce: str, public_key_raw: bytes, config: str) -> Evidence:
        report_data = hardware_report_data(nonce, public_key_raw, config)
        events = self._bind_rtmr3(measurement, config)
        with self._report_entry() as entry:
            (entry / "inblob").write_bytes(report_data)
            written = (entry / "generation").read_text().strip()
            quote = (entry / "outblob").read_bytes()
            if (entry / "generation").read_text().strip() != written:
                raise AttestationError("the configfs-tsm report entry was written by another process meanwhile")
        if not quote:
            raise AttestationError("configfs-tsm returned an empty report")
        return dataclasses.replace(_evidence(self.backend, measurement, nonce, config, report_data, quote),
                                   event_log=events)


class _Entry:
    """A configfs-tsm report entry for one use: made (and removed) here unless an existing one is named."""

    def __init__(self, root: Path, name: str | None) -> None:
        self._path = root / (name or f"twofold-{secrets.token_hex(8)}")
        self._made = name is None

    def __enter__(self) -> Path:
        if self._made:
            try:
                self._path.mkdir()
            except OSError as exc:
                raise ConfigError(f"cannot create a configfs-tsm report under {self._path.parent} "
                                  f"({type(exc).__name__})") from None
        return self._path

    def __exit__(self, *exc: object) -> None:
        if self._made:
            with contextlib.suppress(OSError):  # configfs removes the attributes with the entry
                self._path.rmdir()


class GramineAttester:
    """Gramine on SGX: write ``user_report_data``, read ``quote`` (its measurement is the enclave's MRENCLAVE)."""

    backend = "sgx"

    def __init__(self, root: Path = GRAMINE_ROOT) -> None:
        self.root = Path(root)
        if (self.root / "attestation_type").read_text().strip() != "dcap":
            raise ConfigError("Gramine's attestation type is not dcap (sgx.remote_attestation = \"dcap\")")

    def evidence(self, measurement: str, nonce: str, public_key_raw: bytes, config: str) -> Evidence:
        report_data = hardware_report_data(nonce, public_key_raw, config)
        (self.root / "user_report_data").write_bytes(report_data)
        quote = (self.root / "quote").read_bytes()
        if not quote:
            raise AttestationError("Gramine returned an empty quote")
        return _evidence(self.backend, measurement, nonce, config, report_data, quote)


def attester_for(backend: str, tsm_root: Path = TSM_ROOT, gramine_root: Path = GRAMINE_ROOT):
    """The hardware attester for ``backend`` (``auto``: whichever interface this machine has), or None for
    ``simulation``; a ConfigError when the hardware asked for is absent (``auto`` never means simulation)."""
    if backend == "simulation":
        return None
    if backend in ("auto", "sev-snp", "tdx") and tsm_root.is_dir():
        attester = TsmAttester(tsm_root)
        if backend in ("auto", attester.backend):
            return attester
        raise ConfigError(f"this machine's configfs-tsm provides {attester.backend}, not {backend}")
    if backend in ("auto", "sgx") and (gramine_root / "attestation_type").exists():
        return GramineAttester(gramine_root)
    raise ConfigError(f"no {'hardware attestation interface' if backend == 'auto' else backend} found "
                      f"(configfs-tsm at {tsm_root}, Gramine at {gramine_root}); pass --backend simulation to run "
                      "without hardware memory protection")
