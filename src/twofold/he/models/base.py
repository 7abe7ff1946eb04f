"""The plug-in interface of two-server models: one class per model with its owner, client, MU and SU halves.

MU, SU and the parties never branch on a model's name; they look its :class:`HEModel` up in the registry
(:func:`model`) and call the half they play. The halves reach their server through the narrow
:class:`MUContext` and :class:`SUContext` protocols, never through a server's private state, so a model module
imports no server module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from twofold.crypto import dtpkc
from twofold.errors import ConfigError, InputError
from twofold.he.blocks import Blocks
from twofold.he.fastexp import T1Source
from twofold.he.models.schema import ClassSchema
from twofold.he.randomness import PairPool

Encrypt = Callable[[int], dtpkc.Ciphertext]
Reply = tuple[str, dict[str, Any]]


class Progress(Protocol):
    """A run's progress callback: ``progress(step, done, total)``; it raises to stop the run (cancelled). It keeps
    the last report (``step``, ``done``, ``total``), and ``offset`` is added to ``done`` (steps a resumed run had
    already completed)."""

    step: str
    done: int
    total: int
    offset: int

    def __call__(self, step: str, done: int, total: int) -> None: ...


class Checkpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, doc: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class MUContext(Protocol):
    """What a model's MU half may use of MU."""

    params: dtpkc.PublicParams
    share: dtpkc.StrongKeyShare
    threads: int

    def blocks(self) -> Blocks: ...

    def t1(self) -> T1Source: ...

    def owner_docs(self, model: HEModel) -> list[tuple[str, dict[str, Any]]]:
        """(owner name, stored document) of every owner with records for ``model``, by name."""

    def checkpoint(self, name: str) -> Checkpoint: ...

    def stored_model(self, name: str) -> dict[str, Any] | None: ...

    def su_bytes(self) -> int:
        """Bytes sent and received on MU's links to SU so far."""


class SUContext(Protocol):
    """What a model's SU half may use of SU."""

    params: dtpkc.PublicParams
    system_pool: PairPool

    def open(self, items: list[list[bytes]]) -> list[int]:
        """PSDec2 of (ciphertext, MU's partial decryption) pairs: values MU has blinded."""

    def out(self, cts: Sequence[dtpkc.Ciphertext]) -> Reply: ...

    def pool_for(self, key: bytes) -> PairPool: ...

    def t1(self) -> T1Source: ...

    def sessions(self) -> dict[str, dict[str, Any]]:
        """SU's bounded table of per-run state (oldest dropped first)."""


class HEModel:
    """One model's halves. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    title: ClassVar[str]  # e.g. "Priv-NB"
    schema_type: ClassVar[type[ClassSchema]]
    schema_file: ClassVar[str]  # under the system's public/ directory
    store: ClassVar[str]  # MU's directory of the owners' uploads
    status_key: ClassVar[str]  # where `status` lists the owners' record counts

    # ------------------------------------------------------------------------------ owner and client

    def load_schema(self, public: Path) -> ClassSchema:
        path = public / self.schema_file
        if not path.exists():
            raise ConfigError(f"no public {self.title} schema at {path}: run `twofold he schema` first")
        return self.schema_type.from_dict(json.loads(path.read_text()))

    def encrypt_upload(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                       rows: Sequence[Sequence[float]], labels: Sequence[str]) -> list[dtpkc.Ciphertext]:
        """The ciphertexts of one upload chunk, under the owner's key."""
        raise NotImplementedError

    def encrypt_query(self, encrypt: Encrypt, params: dtpkc.PublicParams, schema: Any,
                      row: Sequence[float]) -> list[dtpkc.Ciphertext]:
        """One encrypted query, under the client's key; its answer is Enc_client(class index)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ MU

    def upload_cts(self, params: dtpkc.PublicParams, schema: Any, records: int) -> int:
        """How many ciphertexts an upload of ``records`` records holds."""
        raise NotImplementedError

    def new_owner(self) -> dict[str, Any]:
        """The model's fields of a new owner document (besides key, records and chunks)."""
        raise NotImplementedError

    def prepare(self, mu: MUContext, schema: Any, cts: list[dtpkc.Ciphertext], records: int) -> Any:
        """Work on an upload that needs no lock (done before MU takes its upload lock); given to :meth:`absorb`."""
        return None

    def absorb(self, mu: MUContext, schema: Any, doc: dict[str, Any], cts: list[dtpkc.Ciphertext], records: int,
               prepared: Any) -> None:
        """Add an upload to the owner's stored document (called under MU's upload lock; no I/O to SU)."""
        raise NotImplementedError

    def train(self, mu: MUContext, schema: Any, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """Train (or resume, or update) and store the model; returns what the operator is told."""
        raise NotImplementedError

    def predict(self, blocks: Blocks, model: dict[str, Any], queries: Sequence[Sequence[dtpkc.Ciphertext]],
                client: dtpkc.PublicKey) -> list[dtpkc.Ciphertext]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ SU

    def su_handlers(self) -> dict[str, Callable[[SUContext, dict[str, Any]], Reply]]:
        """The message kinds this model adds to SU, with their handlers."""
        return {}


REGISTRY: dict[str, HEModel] = {}


def register(cls: type[HEModel]) -> type[HEModel]:
    """Class decorator: make a model available to MU, SU and the parties under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"model {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def model(name: str) -> HEModel:
    """The registered model called ``name``; InputError names the known ones otherwise."""
    from twofold.he import models  # noqa: F401 - importing registers the built-in models

    found = REGISTRY.get(name)
    if found is None:
        raise InputError(f"unknown model {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return found


def names() -> list[str]:
    from twofold.he import models  # noqa: F401

    return list(REGISTRY)
