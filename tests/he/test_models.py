"""One battery over every registered two-server model, through the Python API against real MU and SU processes:
upload by two owners, train, encrypted prediction equal to the plaintext reference, an online update with a
third owner, and a run that SU interrupts and the same training resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from twofold.errors import ServiceError
from twofold.he import PrivDT, PrivLR, PrivNB, api
from twofold.he.client import read_csv
from twofold.he.keys import load_system
from twofold.he.models import base, dt, lr, nb

from .servers import Server, free_port, he, make_system

pytestmark = pytest.mark.timeout(240)


def _rows(system: Path, owners: tuple[str, ...], schema) -> tuple[list, list]:
    rows, labels = [], []
    for owner in owners:
        r, y = read_csv(system.parent / f"{owner}.csv", schema.features, "label")
        rows += r
        labels += y
    return rows, labels


class Reference:
    """The plaintext twin of a model: what its encrypted predictions must equal after each training."""

    def __init__(self, system: Path, schema) -> None:
        self.system, self.schema, self.state = system, schema, None

    def train(self, owners: tuple[str, ...], new: tuple[str, ...]) -> None:
        raise NotImplementedError

    def check(self, got: list[str], queries: list[list[float]]) -> None:
        raise NotImplementedError


class NBReference(Reference):
    def train(self, owners, new):
        self.state = nb.plaintext_counts(self.schema, *_rows(self.system, owners, self.schema))

    def check(self, got, queries):
        for label, row in zip(got, queries, strict=True):
            scores = nb.reference_scores(self.schema, self.state, self.schema.bin_row(row))
            assert scores[self.schema.class_index(label)] >= max(scores) - 1e-3


class LRReference(Reference):
    steps = 3

    def train(self, owners, new):  # warm start: more steps from the last weights, over all records
        self.state = lr.reference_train(self.schema, *_rows(self.system, owners, self.schema), self.steps, self.state)

    def check(self, got, queries):
        want = lr.reference_predict(self.schema, self.state, queries)
        for label, ref, row in zip(got, want, queries, strict=True):
            margin = sum(a * b for a, b in zip([1 << lr.FX, *self.schema.encode_row(row)], self.state, strict=True))
            if abs(margin) > 1 << (lr.FZ - 6):  # away from the boundary the answer must equal the reference
                assert self.schema.class_index(label) == ref


class DTReference(Reference):
    def train(self, owners, new):  # an update keeps the splits and routes only the new records to the leaves
        if self.state is None:
            self.state = dt.reference_train(self.schema, *_rows(self.system, owners, self.schema), 2)
        else:
            self.state = dt.reference_update(self.schema, self.state, *_rows(self.system, new, self.schema))

    def check(self, got, queries):
        assert got == [self.schema.classes[dt.reference_predict(self.schema, self.state, q)] for q in queries]


REFERENCES = {"nb": NBReference, "lr": LRReference, "dt": DTReference}
TRAIN = {"nb": {"chunk": 16}, "lr": {"iterations": LRReference.steps}, "dt": {"depth": 2}}
EXIT_AFTER = {"nb": 3, "lr": 8, "dt": 24}  # SU's requests before it dies in the middle of the first training


def test_every_registered_model_is_in_the_battery_and_the_api():
    assert set(base.names()) == set(REFERENCES) == set(api.MODELS)
    assert {PrivNB.model, PrivLR.model, PrivDT.model} == set(base.names())


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Path:
    return make_system(tmp_path_factory.mktemp("he-models"))


def _train(model: api.TwoServerModel, name: str) -> dict:
    return model.train(**TRAIN[name])


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_upload_train_predict_update(system, tmp_path, name):
    su = Server(system, "su")
    mu = Server(system, "mu", extra=("--su", su.address, "--state", str(tmp_path / "state")))
    try:
        model = api.MODELS[name](system, mu=mu.address)
        schema = model.plugin.load_schema(load_system(system).public)
        ref = REFERENCES[name](system, schema)
        queries, _ = read_csv(system.parent / "queries.csv", schema.features, "label")
        for owner in ("olga", "omar"):
            assert model.owner(owner).upload(system.parent / f"{owner}.csv", "label", chunk_records=16)["records"] > 0
        trained = _train(model, name)
        assert trained["records"] == 70 and trained["owners"] == 2
        ref.train(("olga", "omar"), ())
        ref.check(model.client("alice").predict(queries), queries)
        # CLI and API agree on the same stored model
        cli = he("predict", "--system", str(system), "--mu", mu.address, "--client", "carl", "--algorithm", name,
                 str(system.parent / "queries.csv"))
        assert cli.returncode == 0, cli.stderr
        ref.check(cli.stdout.split(), queries)
        # online update: a third owner joins
        model.owner("otto").upload(system.parent / "otto.csv", "label")
        updated = _train(model, name)
        assert updated["records"] == 90 and updated["owners"] == 3
        ref.train(("olga", "omar", "otto"), ("otto",))
        ref.check(model.client("carl").predict_csv(system.parent / "queries.csv"), queries)
        status = model.status()
        assert status["run"]["state"] == "done" and name in status["models"]
        assert status[base.model(name).status_key] == {"olga": 40, "omar": 30, "otto": 20}
    finally:
        mu.stop()
        su.stop()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_run_that_su_interrupts_resumes(system, tmp_path, name):
    port = free_port()
    su = Server(system, "su", port, ("--exit-after", str(EXIT_AFTER[name])))
    mu = Server(system, "mu", extra=("--su", su.address, "--state", str(tmp_path / "state")))
    try:
        model = api.MODELS[name](system, mu=mu.address)
        schema = model.plugin.load_schema(load_system(system).public)
        for owner in ("olga", "omar"):
            model.owner(owner).upload(system.parent / f"{owner}.csv", "label")
        with pytest.raises(ServiceError, match="progress is saved"):
            _train(model, name)
        assert (tmp_path / "state" / "checkpoints" / f"{name}.msgpack").exists()
        assert model.status()["run"]["state"] == "failed"
        su.proc.wait(10)
        su = Server(system, "su", port)
        result = _train(model, name)
        assert result["resumed"]
        assert not (tmp_path / "state" / "checkpoints" / f"{name}.msgpack").exists()
        ref = REFERENCES[name](system, schema)
        ref.train(("olga", "omar"), ())
        queries, _ = read_csv(system.parent / "queries.csv", schema.features, "label")
        ref.check(model.client("alice").predict(queries), queries)  # as if never interrupted
    finally:
        mu.stop()
        su.stop()
