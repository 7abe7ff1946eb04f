"""One exception hierarchy for twofold.

Every failed decryption or authentication raises the same opaque :class:`IntegrityError`, so an attacker learns
nothing from which check failed. Messages never contain plaintext, keys or passphrases.

Errors cross process boundaries (MU/SU frames, ecall replies, Spark task failures) as one ``code`` per class
(:func:`code_of`, :func:`from_code`): the receiving side raises the same class, and an integrity failure stays
opaque whatever message came with it.
"""

from __future__ import annotations


class TwofoldError(Exception):
    """Base class of every error twofold raises on purpose."""

    code = "error"
    exit_code = 1


class IntegrityError(TwofoldError):
    """Ciphertext, tag, manifest or evidence failed authentication (deliberately opaque)."""

    code = "integrity"
    exit_code = 3

    def __init__(self, message: str = "integrity check failed: data was tampered with, truncated, "
                 "reordered, replayed or opened with the wrong key") -> None:
        super().__init__(message)


class KeyAccessError(TwofoldError):
    """A key could not be obtained: wrong passphrase, unknown or retired key, or access denied."""

    code = "key"
    exit_code = 4


class AttestationError(KeyAccessError):
    """Evidence was rejected by a verifier or a key broker's policy."""

    code = "attestation"
    exit_code = 5


class PolicyError(KeyAccessError):
    """The owner's release policy does not allow what was asked (a release mode, algorithm, column, parameter
    value, or a result over too small a group)."""

    code = "policy"
    exit_code = 10


class InputError(TwofoldError):
    """User input (a file, a table, an argument's content) is malformed or unsupported."""

    code = "input"
    exit_code = 6


class ConfigError(TwofoldError):
    """Configuration is missing or inconsistent (paths, policies, environment)."""

    code = "config"
    exit_code = 7


class ProtocolError(TwofoldError):
    """A peer sent a message that breaks the protocol (unknown version, bad schema, out of order, too big)."""

    code = "protocol"
    exit_code = 8


class ServiceError(TwofoldError):
    """A service could not be reached, started, or answered with an error."""

    code = "service"
    exit_code = 9


def _classes() -> list[type[TwofoldError]]:
    out, todo = [], [TwofoldError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return out


def code_of(exc: BaseException) -> str:
    """The wire code of an exception: its class's (subclasses inherit it); anything unexpected is 'service'."""
    return exc.code if isinstance(exc, TwofoldError) else ServiceError.code


def from_code(code: object, message: object = "", prefix: str = "") -> TwofoldError:
    """The error a peer reported with ``code``, as the local class of that code (ServiceError if unknown)."""
    by_code = {cls.code: cls for cls in (TwofoldError, IntegrityError, KeyAccessError, AttestationError, PolicyError,
                                         InputError, ConfigError, ProtocolError, ServiceError)}
    cls = by_code.get(str(code), ServiceError)
    if cls is IntegrityError:
        return IntegrityError()
    return cls(f"{prefix}{message}")


def code_of_class_name(name: str) -> str | None:
    """The code of the twofold error class called ``name`` (also subclasses defined outside this module)."""
    for cls in _classes():
        if cls.__name__ == name:
            return cls.code
    return None
