"""Sealed model files: what ``twofold train`` writes and ``twofold predict`` reads.

A model is sealed with AES-256-GCM under a key derived from the training dataset's manifest MAC key, so exactly
the parties that can open that dataset (its owner through her keystore, attested enclaves through the key
broker) can open the model. The associated data is the model's description (:meth:`ModelFile.description`,
including the fit's job and passes), so the owner can tell a model an enclave trained from an edited file, and
an enclave predicts only with the columns and label the model was trained on. The envelope is JSON; the payload
is named float arrays (partitioned models) or an MLlib model directory as a tar archive (whole mode). Nothing is
pickled.
"""

from __future__ import annotations

import base64
import dataclasses
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
FORMAT_VERSION = 2


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
    job: str = ""  # the fit's job id (partitioned mode): with passes, its transcript
    passes: int = 0

    def description(self) -> dict[str, Any]:
        """What the sealed model is bound to (its associated data with the model id)."""
        return model_description(self.algorithm, self.mode, self.release, self.dataset_id, self.columns, self.label,
                                 self.params, self.job, self.passes)

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
        return sealing.open_(self.model_key(wrapper), self.sealed, sealing.model_aad(self.model_id,
                                                                                     self.description()))

    def open_arrays(self, wrapper: KeyWrapper) -> sealing.Arrays:
        return sealing.unpack(self.open(wrapper))


def model_description(algorithm: str, mode: str, release: str, dataset_id: str, columns: list[str], label: str,
                      params: dict[str, Any], job: str, passes: int) -> dict[str, Any]:
    return {"algorithm": algorithm, "mode": mode, "release": release, "dataset_id": dataset_id,
            "columns": list(columns), "label": label, "params": params, "job": job, "passes": passes}


def seal_model_file(wrapper: KeyWrapper, model: ModelFile, payload: bytes) -> ModelFile:
    """``model`` with ``payload`` sealed as an enclave would (for whole mode, where the trusted driver holds the
    model); ``model.sealed`` is replaced."""
    mac_key = wrapper.unwrap(model.mac_key, mac_context(model.dataset_id))
    sealed = sealing.seal(sealing.model_key(mac_key, model.model_id), payload,
                          sealing.model_aad(model.model_id, model.description()))
    return dataclasses.replace(model, sealed=sealed)
