"""Parties that talk to MU: data owners (upload), clients (encrypted queries) and the operator (train, status)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twofold.crypto import dtpkc
from twofold.errors import InputError
from twofold.he import codec
from twofold.he.keys import SystemInfo
from twofold.he.models import base
from twofold.he.randomness import PairPool
from twofold.he.transport import PEER_TIMEOUT_S, Channel, LinkStats, OnProgress, client_context, connect


def read_csv(path: Path, columns: list[str], label: str | None) -> tuple[list[list[float]], list[str] | None]:
    """The given feature columns as floats (and the label column as strings) of a CSV file with a header."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in [*columns, *([label] if label else [])] if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
            rows, labels = [], []
            for i, rec in enumerate(reader, start=2):
                try:
                    rows.append([float(rec[c]) for c in columns])
                except (TypeError, ValueError):
                    raise InputError(f"{path}:{i}: a feature is not a number") from None
                if label:
                    labels.append(str(rec[label]).strip())
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    if not rows:
        raise InputError(f"{path} holds no records")
    return rows, (labels if label else None)


def read_table(path: Path, label: str) -> tuple[list[str], list[list[float]], list[str]]:
    """All columns but the label as features."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header or label not in header:
        raise InputError(f"{path}: no column {label!r}")
    features = [c for c in header if c != label]
    rows, labels = read_csv(path, features, label)
    return features, rows, labels or []


class Party:
    """An enrolled owner, client or admin with its TLS identity and (for owners and clients) DT-PKC keys."""

    def __init__(self, info: SystemInfo, name: str, mu_address: str, *, peer_timeout: float = PEER_TIMEOUT_S) -> None:
        self.info = info
        self.name = name
        self.params = info.params()
        cert, key = info.tls_files(name)
        self._ctx = client_context(info.ca_pem, cert, key)
        self.mu_address = mu_address
        self.peer_timeout = peer_timeout
        self.stats = LinkStats()
        self._keys: dtpkc.UserKeyPair | None = None
        self._pool: PairPool | None = None

    @property
    def keys(self) -> dtpkc.UserKeyPair:
        if self._keys is None:
            self._keys = self.info.party_key(self.name, self.params)
        return self._keys

    def pool(self) -> PairPool:
        if self._pool is None:
            self._pool = PairPool(self.keys.public)
        return self._pool

    def connect(self) -> Channel:
        """A link to MU; its frame limit is the one MU accepts from this role (told in ``hello``)."""
        channel = connect(self.mu_address, self._ctx, "mu", stats=[self.stats], peer_timeout=self.peer_timeout)
        try:
            hello = channel.request("hello", {"version": 1})["result"]
        except BaseException:
            channel.close()
            raise
        channel.max_frame = int(hello.get("max_frame", channel.max_frame))
        return channel

    def request(self, kind: str, body: dict[str, Any], *, on_progress: OnProgress | None = None) -> dict[str, Any]:
        """One request on a fresh link. A long one (``train``) stays alive on MU's heartbeats, which carry its
        progress to ``on_progress``; a silent MU fails it after ``peer_timeout``."""
        with self.connect() as channel:
            return channel.request(kind, body, on_progress=on_progress)["result"]

    # ---------------------------------------------------------------------------------------------- owner

    def schema(self, model: str) -> Any:
        """The public schema of ``model`` (binning, standardization) that this party encodes with."""
        return base.model(model).load_schema(self.info.public)

    def upload(self, path: Path, label: str, *, chunk_records: int = 64, model: str = "nb",
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Encrypt every record of a CSV under this owner's key and upload it in chunks (in the model's encoding)."""
        plugin = base.model(model)
        schema = plugin.load_schema(self.info.public)
        if label != schema.label:
            raise InputError(f"the schema's label column is {schema.label!r}, not {label!r}")
        rows, labels = read_csv(path, schema.features, label)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        result: dict[str, Any] = {}
        encrypt = self.pool().encrypt
        with self.connect() as channel:
            for index, start in enumerate(range(0, len(rows), chunk_records)):
                part = slice(start, start + chunk_records)
                cts = plugin.encrypt_upload(encrypt, self.params, schema, rows[part], labels[part])  # type: ignore[index]
                body = {"model": model, "key_id": codec.key_id(self.keys.public), "chunk": f"{digest}-{index}",
                        "records": len(rows[part]), "cts": [codec.ct_to_bytes(self.params, c) for c in cts]}
                result = channel.request("upload", body)["result"]
                if progress:
                    progress(len(rows[part]))
        return result

    # --------------------------------------------------------------------------------------------- client

    def encrypt_queries(self, rows: list[list[float]], model: str = "nb") -> tuple[Any, list[list[bytes]]]:
        plugin = base.model(model)
        schema = plugin.load_schema(self.info.public)
        encrypt = self.pool().encrypt
        return schema, [[codec.ct_to_bytes(self.params, c) for c in plugin.encrypt_query(encrypt, self.params, schema,
                                                                                        row)] for row in rows]

    def predict(self, rows: list[list[float]], *, model: str = "nb", batch: int = 16,
                progress: Callable[[int], None] | None = None) -> list[str]:
        """Class labels for the rows: queries and answers travel encrypted; only this client decrypts."""
        schema, queries = self.encrypt_queries(rows, model)
        out: list[str] = []
        with self.connect() as channel:
            for part in chunks(queries, batch):
                body = {"model": model, "key_id": codec.key_id(self.keys.public), "queries": part}
                answers = channel.request("predict", body)["result"]["answers"]
                out += [self.decrypt_class(schema, a) for a in answers]
                if progress:
                    progress(len(part))
        return out

    def decrypt_class(self, schema: Any, answer: bytes) -> str:
        index = int(dtpkc.weak_decrypt(self.keys.secret, codec.ct_from_bytes(self.params, answer)))
        if not 0 <= index < len(schema.classes):
            raise InputError("answer decrypts to no class")
        return schema.classes[index]


def chunks(seq: list, size: int) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
