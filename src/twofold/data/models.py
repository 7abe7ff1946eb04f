"""Sealed model files: what ``twofold train`` writes and ``twofold predict`` reads.

A model is sealed with AES-256-GCM under a key derived from the training dataset's manifest MAC key, so exactly
the parties that can open that dataset (its owner through her keystore, attested enclaves through the key
broker) can open the model. The envelope is JSON; the payload is named float arrays (partitioned models) or an
MLlib model directory as a tar archive (whole mode). Nothing is pickled.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twofold.crypto import sealing
from twofold.crypto.mac import mac_context
from twofold.errors import InputError
from twofold.fsutil import write_private
from twofold.keys.wrapping import KeyWrapper

FORMAT = "twofold-model"
FORMAT_VERSION = 1


@dataclass
class ModelFile:
    algorithm: str
    mode: str  # "partitioned" | "whole"
    release: str  # "statistics" | "sealed" | "whole"
    dataset_id: str
    model_id: str
    mac_key: str  # the training dataset's wrapped MAC key (a wrapped key, not a secret)
    columns: list[str]
    label: str
    params: dict[str, Any]
    sealed: bytes
    payload: str = "arrays"  # "arrays" | "spark-ml-tar"
    created: float = field(default_factory=time.time)

    def save(self, path: Path | str) -> None:
        doc = {**asdict(self), "format": FORMAT, "format_version": FORMAT_VERSION,
               "sealed": base64.b64encode(self.sealed).decode()}
        write_private(Path(path), json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    @classmethod
    def load(cls, path: Path | str) -> ModelFile:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError:
            raise InputError(f"model file {path} does not exist") from None
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{path} is not a twofold model file") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{path} is not a twofold model file")
        if doc.get("format_version") != FORMAT_VERSION:
            raise InputError(f"model format version {doc.get('format_version')} is not supported")
        try:
            fields = {k: doc[k] for k in cls.__dataclass_fields__}
            fields["sealed"] = base64.b64decode(doc["sealed"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path} is a malformed model file") from None

    def model_key(self, wrapper: KeyWrapper) -> bytes:
        mac_key = wrapper.unwrap(self.mac_key, mac_context(self.dataset_id))
        return sealing.model_key(mac_key, self.model_id)

    def open(self, wrapper: KeyWrapper) -> bytes:
        """The plaintext payload, for a party that can unwrap the training dataset's MAC key."""
        return sealing.open_(self.model_key(wrapper), self.sealed, sealing.model_aad(self.model_id, self.algorithm))

    def open_arrays(self, wrapper: KeyWrapper) -> sealing.Arrays:
        return sealing.unpack(self.open(wrapper))


def seal_payload(wrapper: KeyWrapper, dataset_id: str, mac_key_wrapped: str, model_id: str, algorithm: str,
                 payload: bytes) -> bytes:
    """Seal a payload as the enclave would (for whole mode, where the trusted driver holds the model)."""
    mac_key = wrapper.unwrap(mac_key_wrapped, mac_context(dataset_id))
    return sealing.seal(sealing.model_key(mac_key, model_id), payload, sealing.model_aad(model_id, algorithm))
