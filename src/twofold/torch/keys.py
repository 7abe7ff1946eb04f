"""Getting a tensor dataset's data key into the training process, in memory only.

Two providers, named for whose trust they use:

- :class:`KeystoreKeyProvider`: the owner's own keystore (owner-local training; the owner's passphrase is here).
- :class:`DeviceKeyProvider`: a key broker releases the key after attestation. The training process attests
  with the measurement of its key- and plaintext-handling code (:func:`twofold.torch.measure.training_measurement`)
  and receives the key sealed (HPKE) to an ephemeral X25519 key that never leaves this process.

Either way the key is returned as ``bytes`` to :class:`~twofold.torch.device.DeviceDecryptor`, which copies it to
the device; it is never written to disk or logged.
"""

from __future__ import annotations

import logging
from typing import Protocol

from twofold.enclave.attester import Attester, SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerAddress, BrokerSession
from twofold.keys.wrapping import KeyWrapper
from twofold.torch.measure import training_measurement

log = logging.getLogger("twofold.torch")


class KeyProvider(Protocol):
    """Turns a dataset's wrapped data key (and its context) into the 32 key bytes."""

    def data_key(self, wrapped: str, context: bytes) -> bytes: ...


class KeystoreKeyProvider:
    """The owner's keystore (or any KeyWrapper) unwraps the key directly."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        self._wrapper = wrapper

    def data_key(self, wrapped: str, context: bytes) -> bytes:
        return self._wrapper.unwrap(wrapped, context)


class DeviceKeyProvider:
    """A key broker session run by the training process: attest, then have data keys released to it."""

    def __init__(self, broker: BrokerAddress, *, attester: Attester | None = None,
                 measurement: str | None = None) -> None:
        self.measurement = measurement or training_measurement()
        self._attester = attester or SimulationAttester(load_or_create_platform_key())
        if self._attester.backend == "simulation":
            log.warning("training process attests with SIMULATION evidence (no hardware memory protection)")
        self._session = BrokerSession(broker.url, self.measurement, self._evidence, broker.pinned())

    def _evidence(self, nonce: str, public_key_raw: bytes, config: str):
        return self._attester.evidence(self.measurement, nonce, public_key_raw, config)

    def attest(self) -> None:
        """Attest now (otherwise the first :meth:`data_key` does); raises AttestationError if denied."""
        self._session.attest()

    def data_key(self, wrapped: str, context: bytes) -> bytes:
        return self._session.unwrap(wrapped, context)


def as_key_provider(keys: KeyProvider | KeyWrapper | BrokerAddress) -> KeyProvider:
    """A provider from a provider, a KeyWrapper (keystore, broker session) or a key broker's address."""
    if isinstance(keys, BrokerAddress):
        return DeviceKeyProvider(keys)
    if hasattr(keys, "data_key"):
        return keys  # type: ignore[return-value]
    if hasattr(keys, "unwrap"):
        return KeystoreKeyProvider(keys)  # type: ignore[arg-type]
    raise TypeError("keys must be a KeyProvider, a KeyWrapper or a key broker's BrokerAddress")
