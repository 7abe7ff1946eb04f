"""One code per error class, and errors that cross a process boundary come back as the same class."""

from __future__ import annotations

import pytest

from twofold import errors
from twofold.errors import (
    AttestationError,
    ConfigError,
    InputError,
    IntegrityError,
    KeyAccessError,
    ProtocolError,
    ServiceError,
    TwofoldError,
)
from twofold.spark.errors import translate

CLASSES = [TwofoldError, IntegrityError, KeyAccessError, AttestationError, InputError, ConfigError, ProtocolError,
           ServiceError]


def test_every_class_has_its_own_code():
    assert len({cls.code for cls in CLASSES}) == len(CLASSES)


@pytest.mark.parametrize("cls", CLASSES)
def test_codes_round_trip_to_the_same_class(cls):
    back = errors.from_code(errors.code_of(cls("boom")), "boom")
    assert type(back) is cls


def test_integrity_errors_stay_opaque_and_unknown_codes_are_service_errors():
    assert str(errors.from_code("integrity", "tag mismatch at byte 17")) == str(IntegrityError())
    assert type(errors.from_code("no-such-code", "x")) is ServiceError
    assert errors.code_of(ValueError("x")) == "service"


def test_subclasses_inherit_their_parents_code():
    class Silent(ServiceError):
        pass

    assert errors.code_of(Silent("x")) == "service"
    assert errors.code_of_class_name("Silent") == "service"


def test_spark_task_failures_come_back_typed():
    trace = ("py4j.protocol.Py4JJavaError: ... Traceback (most recent call last):\n"
             "twofold.errors.ConfigError: dataset ds-1 is not open\n...\n"
             "twofold.spark.enclave_client.EnclaveSilentError: the enclave sent nothing for 20 s\n")
    got = translate(RuntimeError(trace))
    assert type(got) is ServiceError and "sent nothing" in str(got)
    assert type(translate(RuntimeError("twofold.errors.IntegrityError: secret detail"))) is IntegrityError
    assert "secret" not in str(translate(RuntimeError("twofold.errors.IntegrityError: secret detail")))
    assert type(translate(RuntimeError("java.lang.OutOfMemoryError"))) is ServiceError
