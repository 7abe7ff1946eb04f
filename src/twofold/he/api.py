"""The two-server models from Python: one class per model, with its owner, client and operator roles.

The same steps as ``twofold he upload/train/predict``, against running MU and SU (``twofold he serve``)::

    from twofold.he import PrivNB

    nb = PrivNB("system", mu="127.0.0.1:7000")
    nb.owner("hospital-a").upload("train.csv", label="outcome")   # encrypted under hospital-a's key
    nb.train()                                                    # MU and SU; nobody sees a record
    nb.client("clinic").predict_csv("queries.csv")                # answers only the clinic can read

Every call opens its own mutually authenticated TLS link with the enrolled party's certificate; a silent server
fails it after ``peer_timeout`` seconds (servers send heartbeats while they work).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from twofold.he.client import Party, read_csv
from twofold.he.keys import SystemInfo, load_system
from twofold.he.models import base
from twofold.he.transport import PEER_TIMEOUT_S


class Owner:
    """A data owner of one model: encrypts her records under her own key and uploads them to MU."""

    def __init__(self, party: Party, model: str) -> None:
        self.party, self.model = party, model

    def upload(self, path: str | Path, label: str, *, chunk_records: int = 64) -> dict[str, Any]:
        """Upload a CSV's records (all of its feature columns in the public schema); returns MU's counts."""
        return self.party.upload(Path(path), label, chunk_records=chunk_records, model=self.model)


class Client:
    """A client of one model: sends encrypted queries and alone decrypts the answers."""

    def __init__(self, party: Party, model: str) -> None:
        self.party, self.model = party, model

    def predict(self, rows: list[list[float]], *, batch: int = 16) -> list[str]:
        """One class label per row (rows in the schema's feature order)."""
        return self.party.predict(rows, model=self.model, batch=batch)

    def predict_csv(self, path: str | Path, *, batch: int = 16) -> list[str]:
        rows, _ = read_csv(Path(path), self.party.schema(self.model).features, None)
        return self.predict(rows, batch=batch)


class TwoServerModel:
    """One registered model on one system; subclasses name the model and its training options."""

    model: ClassVar[str]

    def __init__(self, system: str | Path | SystemInfo, mu: str = "127.0.0.1:7700", *,
                 peer_timeout: float = PEER_TIMEOUT_S) -> None:
        self.info = system if isinstance(system, SystemInfo) else load_system(Path(system))
        self.mu = mu
        self.peer_timeout = peer_timeout
        self.plugin = base.model(self.model)

    def _party(self, name: str) -> Party:
        return Party(self.info, name, self.mu, peer_timeout=self.peer_timeout)

    def owner(self, name: str) -> Owner:
        return Owner(self._party(name), self.model)

    def client(self, name: str) -> Client:
        return Client(self._party(name), self.model)

    def _train(self, admin: str, body: dict[str, Any], on_progress: Callable[[dict], None] | None) -> dict[str, Any]:
        full = {"model": self.model, "chunk": 256, "iterations": 0, "fresh": False, **body}
        return self._party(admin).request("train", full, on_progress=on_progress)

    def status(self, admin: str = "admin") -> dict[str, Any]:
        """MU's owners, models, links and the current (or last) training run."""
        return self._party(admin).request("status", {})

    def cancel(self, admin: str = "admin") -> dict[str, Any]:
        """Stop the running training at its next saved step."""
        return self._party(admin).request("cancel", {})["run"]


class PrivNB(TwoServerModel):
    """Naive Bayes over the public binning (Priv-NB)."""

    model = "nb"

    def train(self, admin: str = "admin", *, chunk: int = 256,
              on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Build the encrypted table from every owner's aggregate (``chunk`` entries per SU round)."""
        return self._train(admin, {"chunk": chunk}, on_progress)


class PrivLR(TwoServerModel):
    """Logistic regression by encrypted gradient descent (Priv-LR), warm-started from the stored weights."""

    model = "lr"

    def train(self, admin: str = "admin", *, iterations: int = 10, fresh: bool = False,
              on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        return self._train(admin, {"iterations": iterations, "fresh": fresh}, on_progress)


class PrivDT(TwoServerModel):
    """A depth-limited decision tree over the public binning (Priv-DT), updated as owners add records."""

    model = "dt"

    def train(self, admin: str = "admin", *, depth: int | None = None, fresh: bool = False,
              on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Train, resume, or update the stored tree (``fresh`` rebuilds it; another ``depth`` rebuilds too)."""
        return self._train(admin, {"iterations": depth or 0, "fresh": fresh}, on_progress)


MODELS: dict[str, type[TwoServerModel]] = {cls.model: cls for cls in (PrivNB, PrivLR, PrivDT)}
