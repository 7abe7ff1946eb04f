"""One exception hierarchy for twofold.

Every failed decryption or authentication raises the same opaque :class:`IntegrityError`, so an attacker learns
nothing from which check failed. Messages never contain plaintext, keys or passphrases.
"""

from __future__ import annotations


class TwofoldError(Exception):
    """Base class of every error twofold raises on purpose."""

    exit_code = 1


class IntegrityError(TwofoldError):
    """Ciphertext, tag, manifest or evidence failed authentication (deliberately opaque)."""

    exit_code = 3

    def __init__(self, message: str = "integrity check failed: data was tampered with, truncated, "
                 "reordered, replayed or opened with the wrong key") -> None:
        super().__init__(message)


class KeyAccessError(TwofoldError):
    """A key could not be obtained: wrong passphrase, unknown or retired key, or access denied."""

    exit_code = 4


class AttestationError(KeyAccessError):
    """Evidence was rejected by a verifier or a key broker's policy."""

    exit_code = 5


class InputError(TwofoldError):
    """User input (a file, a table, an argument's content) is malformed or unsupported."""

    exit_code = 6


class ConfigError(TwofoldError):
    """Configuration is missing or inconsistent (paths, policies, environment)."""

    exit_code = 7


class ProtocolError(TwofoldError):
    """A peer sent a message that breaks the protocol (unknown version, bad schema, out of order, too big)."""

    exit_code = 8


class ServiceError(TwofoldError):
    """A service could not be reached, started, or answered with an error."""

    exit_code = 9
