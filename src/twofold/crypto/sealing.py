"""Sealed job results and model files: their keys, derived from a dataset's MAC key, their associated data, and
the one shape their contents have (named float64 arrays packed with msgpack).

Only attested enclaves (through the key broker) and the owner (through her keystore) can unwrap a dataset's
MAC key, so only they can derive these keys: the untrusted side sees sealed bytes only. Associated data binds
every sealed blob to its job, the job's terms (:func:`job_terms`: dataset, algorithm, columns, label, parameters
and release), iteration and partition, so blobs cannot be replayed, reordered or swapped, nor opened by a job
that claims other terms; a model's associated data is its whole description (:func:`model_aad`), so a model
file whose algorithm, columns, label, parameters or fit transcript (job and passes) was edited does not open.
Array sizes depend only on the arrays' shapes, never on their values, so message sizes reveal nothing about the
data. Shared by the enclave's kernels and the owner's side (opening a model or predictions) without loading any
kernel.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

import msgpack
import numpy as np
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twofold.crypto import aead
from twofold.crypto.mac import canonical
from twofold.errors import ProtocolError


def derive(mac_key: bytes, purpose: str, ident: str) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None,
                info=f"twofold-{purpose}-v1|{ident}".encode()).derive(mac_key)


def job_key(mac_key: bytes, job: str) -> bytes:
    return derive(mac_key, "job", job)


def model_key(mac_key: bytes, model_id: str) -> bytes:
    return derive(mac_key, "model", model_id)


def job_terms(dataset_id: str, algorithm: str, columns: list[str], label: str, params: dict[str, Any],
              release: str) -> str:
    """The hex digest of a fit's terms: what every sealed state and statistic of the fit is bound to."""
    return sha256(canonical({"dataset_id": dataset_id, "algorithm": algorithm, "columns": list(columns),
                             "label": label, "params": params, "release": release})).hexdigest()


def stats_aad(job: str, terms: str, iteration: int, index: int) -> bytes:
    return f"stats|{job}|{terms}|{iteration}|{index}".encode()


def state_aad(job: str, terms: str, iteration: int) -> bytes:
    return f"state|{job}|{terms}|{iteration}".encode()


def predictions_aad(job: str, index: int) -> bytes:
    return f"predictions|{job}|{index}".encode()


def model_aad(model_id: str, description: dict[str, Any]) -> bytes:
    """A model's associated data: its id and description (algorithm, mode, release, training dataset, columns,
    label, parameters, and the fit's job and passes: its transcript)."""
    return f"model|{model_id}|".encode() + canonical(description)


def seal(key: bytes, data: bytes, aad: bytes) -> bytes:
    return aead.seal(key, data, aad)


def open_(key: bytes, data: bytes, aad: bytes) -> bytes:
    return aead.open_sealed(key, data, aad)


Arrays = dict[str, np.ndarray]


def pack(arrays: Arrays) -> bytes:
    return msgpack.packb({name: [list(np.shape(a)), np.ascontiguousarray(a, dtype="<f8").tobytes()]
                          for name, a in sorted(arrays.items())}, use_bin_type=True)


def unpack(data: bytes) -> Arrays:
    try:
        raw = msgpack.unpackb(data, raw=False)
        out = {}
        for name, (shape, buffer) in raw.items():
            array = np.frombuffer(buffer, dtype="<f8")
            out[str(name)] = array.reshape([int(s) for s in shape]).copy()
        return out
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError):
        raise ProtocolError("malformed array bundle") from None
