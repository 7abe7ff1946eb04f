from __future__ import annotations

import hmac
import json
import os
import shutil
import stat
from hashlib import sha256

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofold.crypto.pme import PmeSession, key_material_name
from twofold.data import EncryptedDataset, Manifest, inspect
from twofold.data.export import export_dataset
from twofold.errors import ConfigError, InputError, IntegrityError, KeyAccessError
from twofold.keys.keystore import Keystore

from ..conftest import FAST_KDF, PASSPHRASE


def write(table, keystore, path, rows_per_file=3, label="label"):
    return EncryptedDataset.write(table, path, keystore, label=label, rows_per_file=rows_per_file)


def test_round_trip_and_partitioning(table, keystore, tmp_path):
    dataset = write(table, keystore, tmp_path / "ds")
    assert [f.rows for f in dataset.files] == [3, 3, 1]
    reopened = EncryptedDataset.open(tmp_path / "ds", keystore)
    assert reopened.read_table().equals(table)
    assert pa.Table.from_batches(list(reopened.iter_batches(batch_size=2))).equals(table)
    assert reopened.read_file(1).num_rows == 3
    assert reopened.label == "label" and reopened.num_rows == 7
    assert reopened.read_table(columns=["city"]).column("city").equals(table.column("city"))


def test_files_are_private(table, keystore, tmp_path):
    write(table, keystore, tmp_path / "ds")
    for path in (tmp_path / "ds").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- Hypothesis round trips over schemas -----------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_columns = {
    "int64": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float64": (pa.float64(), st.one_of(st.none(), st.floats(allow_nan=False))),
    "string": (pa.string(), st.one_of(st.none(), _text, st.just(""))),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
}


@st.composite
def tables(draw, csv_safe: bool = False):
    rows = draw(st.integers(1, 25))
    kinds = draw(st.lists(st.sampled_from(sorted(_columns)), min_size=1, max_size=4))
    arrays = {"id": pa.array(range(rows), pa.int64())} if csv_safe else {}  # CSV skips all-empty lines
    for index, kind in enumerate(kinds):
        arrow_type, values = _columns[kind]
        if csv_safe and kind == "string":  # CSV cannot tell null from "", nor keep newlines unquoted-safe
            values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                             max_size=12).filter(lambda s: s.strip() == s and s.lower() not in _CSV_NULLS)
        arrays[f"c{index}_{kind}"] = pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), arrow_type)
    return pa.table(arrays)


_CSV_NULLS = {"", "null", "nan", "n/a", "na", "none", "true", "false", "#n/a", "-nan", "1.#ind", "-1.#ind",
              "1.#qnan", "-1.#qnan", "#n/a n/a", "<na>"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables(), rows_per_file=st.integers(1, 10))
def test_parquet_round_trip_is_identical(data, rows_per_file, keystore, tmp_path_factory):
    work = tmp_path_factory.mktemp("rt")
    pq.write_table(data, work / "in.parquet")
    EncryptedDataset.write(work / "in.parquet", work / "ds", keystore, rows_per_file=rows_per_file)
    export_dataset(EncryptedDataset.open(work / "ds", keystore), work / "out.parquet")
    assert pq.read_table(work / "out.parquet").equals(data)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables(csv_safe=True), rows_per_file=st.integers(1, 10))
def test_csv_round_trip_is_identical(data, rows_per_file, keystore, tmp_path_factory):
    work = tmp_path_factory.mktemp("rt")
    pacsv.write_csv(data, work / "in.csv")
    EncryptedDataset.write(work / "in.csv", work / "ds", keystore, rows_per_file=rows_per_file)
    export_dataset(EncryptedDataset.open(work / "ds", keystore), work / "out.csv")
    original = pacsv.read_csv(work / "in.csv")
    assert pacsv.read_csv(work / "out.csv").equals(original)
    assert (work / "out.csv").read_bytes() == (work / "in.csv").read_bytes() or \
        pacsv.read_csv(work / "out.csv").equals(original)


# -- tampering -------------------------------------------------------------------------------------------------


@pytest.fixture
def dataset_dir(table, keystore, tmp_path):
    write(table, keystore, tmp_path / "ds")
    return tmp_path / "ds"


def _open_and_read(path, keystore):
    EncryptedDataset.open(path, keystore).read_table()


def test_deleted_file_is_detected(dataset_dir, keystore):
    (dataset_dir / "part-00001.parquet").unlink()
    with pytest.raises(IntegrityError):
        EncryptedDataset.open(dataset_dir, keystore)


def test_swapped_files_are_detected(dataset_dir, keystore):
    a, b = dataset_dir / "part-00000.parquet", dataset_dir / "part-00001.parquet"
    tmp = dataset_dir.parent / "swap"
    shutil.move(a, tmp), shutil.move(b, a), shutil.move(tmp, b)
    for km in (key_material_name(a.name), key_material_name(b.name)):  # swap key material too
        shutil.copy(dataset_dir / km, dataset_dir.parent / km)
    shutil.copy(dataset_dir.parent / key_material_name(a.name), dataset_dir / key_material_name(b.name))
    shutil.copy(dataset_dir.parent / key_material_name(b.name), dataset_dir / key_material_name(a.name))
    with pytest.raises(IntegrityError):
        _open_and_read(dataset_dir, keystore)


def test_duplicated_file_is_detected(dataset_dir, keystore):
    shutil.copy(dataset_dir / "part-00000.parquet", dataset_dir / "part-00003.parquet")
    shutil.copy(dataset_dir / key_material_name("part-00000.parquet"),
                dataset_dir / key_material_name("part-00003.parquet"))
    with pytest.raises(IntegrityError):
        EncryptedDataset.open(dataset_dir, keystore)


def test_duplicated_file_in_place_of_another_is_detected(dataset_dir, keystore):
    shutil.copy(dataset_dir / "part-00000.parquet", dataset_dir / "part-00001.parquet")
    shutil.copy(dataset_dir / key_material_name("part-00000.parquet"),
                dataset_dir / key_material_name("part-00001.parquet"))
    with pytest.raises(IntegrityError):
        _open_and_read(dataset_dir, keystore)


def test_rolled_back_file_is_detected(table, keystore, tmp_path):
    old = write(table, keystore, tmp_path / "old")
    write(table, keystore, tmp_path / "new")
    # An earlier encryption of the same partition, valid under the same keys, put back in place.
    for name in ("part-00000.parquet", key_material_name("part-00000.parquet")):
        shutil.copy(old.path / name, tmp_path / "new" / name)
    with pytest.raises(IntegrityError):
        _open_and_read(tmp_path / "new", keystore)


@pytest.mark.parametrize("edit", [
    lambda body: body.update(num_rows=body["num_rows"] + 1),
    lambda body: body.update(label="age"),
    lambda body: body["files"][0].update(rows=2),
    lambda body: body["files"].reverse(),
    lambda body: body["files"].pop(),
    lambda body: body.update(dataset_id="ds-0000000000000000"),
])
def test_edited_manifest_is_detected(dataset_dir, keystore, edit):
    path = dataset_dir / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc["manifest"])
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        _open_and_read(dataset_dir, keystore)


def test_manifest_file_is_format_v1_as_any_json_and_hmac_library_reads_it(dataset_dir, keystore):
    raw = (dataset_dir / "manifest.json").read_bytes()
    doc = json.loads(raw)
    assert raw == json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    body = doc["manifest"]
    mac_key = keystore.unwrap(doc["keys"]["mac_key"], f"manifest-mac|{body['dataset_id']}".encode())
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert hmac.digest(mac_key, b"twofold-manifest-v1\x00" + canonical, sha256).hex() == doc["mac"]
    assert EncryptedDataset.open(dataset_dir, keystore).manifest == Manifest.from_bytes(raw)


def test_manifest_mac_key_swapped_from_other_dataset_is_detected(table, keystore, tmp_path):
    write(table, keystore, tmp_path / "a")
    write(table, keystore, tmp_path / "b")
    doc_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    doc_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    doc_a["keys"] = doc_b["keys"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(doc_a))
    with pytest.raises(IntegrityError):
        EncryptedDataset.open(tmp_path / "a", keystore)


def test_flipped_byte_anywhere_in_a_data_file_is_caught(dataset_dir, keystore):
    path = dataset_dir / "part-00000.parquet"
    original = path.read_bytes()
    km = (dataset_dir / key_material_name(path.name)).read_bytes()
    session = PmeSession(keystore, inspect(dataset_dir)["dataset_id"])
    step = max(1, len(original) // 97)
    for offset in range(0, len(original), step):
        corrupted = bytearray(original)
        corrupted[offset] ^= 0x01
        path.write_bytes(bytes(corrupted))
        with pytest.raises(IntegrityError):
            _open_and_read(dataset_dir, keystore)
        # ... and PME's own AES-GCM tags catch it even without the manifest hash.
        if 4 <= offset < len(original) - 8:
            with pytest.raises(IntegrityError):
                session.read_file(bytes(corrupted), path.name, km)
    path.write_bytes(original)
    _open_and_read(dataset_dir, keystore)


def test_truncated_file_is_detected(dataset_dir, keystore):
    path = dataset_dir / "part-00002.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(IntegrityError):
        EncryptedDataset.open(dataset_dir, keystore)
    session = PmeSession(keystore, inspect(dataset_dir)["dataset_id"])
    with pytest.raises(IntegrityError):
        session.read_file(path.read_bytes(), path.name, (dataset_dir / key_material_name(path.name)).read_bytes())


def test_tampered_key_material_is_detected(dataset_dir, keystore):
    path = dataset_dir / key_material_name("part-00000.parquet")
    doc = json.loads(path.read_text())
    inner = json.loads(doc["footerKey"])
    wrapped = inner["wrappedDEK"]
    inner["wrappedDEK"] = ("A" if wrapped[0] != "A" else "B") + wrapped[1:]
    doc["footerKey"] = json.dumps(inner)
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        _open_and_read(dataset_dir, keystore)


def test_wrong_keystore_is_refused(dataset_dir, tmp_path):
    other = Keystore.create(tmp_path / "other", PASSPHRASE, FAST_KDF)
    with pytest.raises(KeyAccessError):
        EncryptedDataset.open(dataset_dir, other)


def test_no_plaintext_value_appears_in_any_byte(keystore, tmp_path):
    secrets_ = [f"SECRET-{i:04d}-{'x' * 24}" for i in range(500)]
    numbers = [7_391_223_017_444 + i for i in range(500)]
    data = pa.table({"name": secrets_, "number": numbers, "label": [i % 2 for i in range(500)]})
    pacsv.write_csv(data, tmp_path / "in.csv")
    EncryptedDataset.write(tmp_path / "in.csv", tmp_path / "ds", keystore, label="label", rows_per_file=128)
    blob = b"".join(p.read_bytes() for p in (tmp_path / "ds").iterdir())
    assert not any(s.encode() in blob for s in secrets_)
    assert not any(str(n).encode() in blob for n in numbers)
    assert not any(n.to_bytes(8, "little") in blob for n in numbers)
    assert b"SECRET" not in blob


# -- bad input -------------------------------------------------------------------------------------------------


def test_empty_input(keystore, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty"):
        EncryptedDataset.write(tmp_path / "empty.csv", tmp_path / "ds", keystore)
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="no data rows"):
        EncryptedDataset.write(tmp_path / "header.csv", tmp_path / "ds", keystore)
    assert not (tmp_path / "ds").exists()


def test_ragged_csv_gives_a_clear_error_without_data(keystore, tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n7,8,9\n")
    with pytest.raises(InputError, match="ragged") as info:
        EncryptedDataset.write(tmp_path / "ragged.csv", tmp_path / "ds", keystore)
    assert "4,5" not in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_type_change_mid_csv_gives_a_clear_error_without_data(keystore, tmp_path, monkeypatch):
    monkeypatch.setattr("twofold.data.sources.CSV_BLOCK_BYTES", 64)
    lines = ["a,b"] + [f"{i},{i}" for i in range(200)] + ["zzsecret,1"]
    (tmp_path / "typed.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="not int64") as info:
        EncryptedDataset.write(tmp_path / "typed.csv", tmp_path / "ds", keystore)
    assert "zzsecret" not in str(info.value)


def test_unknown_label_and_bad_arguments(table, keystore, tmp_path):
    with pytest.raises(InputError, match="label"):
        EncryptedDataset.write(table, tmp_path / "ds", keystore, label="nope")
    with pytest.raises(ConfigError):
        EncryptedDataset.write(table, tmp_path / "ds", keystore, rows_per_file=0)
    write(table, keystore, tmp_path / "ds")
    with pytest.raises(ConfigError, match="exists"):
        write(table, keystore, tmp_path / "ds")
    with pytest.raises(InputError):
        EncryptedDataset.open(tmp_path / "missing", keystore)


def test_interrupted_write_leaves_nothing_that_looks_complete(table, keystore, tmp_path):
    def batches():
        yield from table.to_batches(max_chunksize=2)[:2]
        raise KeyboardInterrupt

    reader = pa.RecordBatchReader.from_batches(table.schema, batches())
    with pytest.raises(KeyboardInterrupt):
        EncryptedDataset.write(reader, tmp_path / "ds", keystore, rows_per_file=1)
    assert sorted(os.listdir(tmp_path)) == ["keystore"]


# -- rotation --------------------------------------------------------------------------------------------------


def test_rotation_keeps_old_datasets_readable_until_retired(table, keystore, tmp_path):
    old = write(table, keystore, tmp_path / "old")
    keystore.rotate()
    assert EncryptedDataset.open(old.path, keystore).read_table().equals(table)  # old version still opens
    fresh = write(table, keystore, tmp_path / "fresh")
    assert inspect(fresh.path)["master_key_version"] == 2
    keystore.retire(1)
    for handle in (keystore, Keystore.open(keystore.directory, PASSPHRASE)):
        with pytest.raises(KeyAccessError, match="retired"):
            EncryptedDataset.open(old.path, handle)
    assert EncryptedDataset.open(fresh.path, keystore).read_table().equals(table)


def test_rewrap_then_retire_keeps_dataset_readable(table, keystore, tmp_path):
    old = write(table, keystore, tmp_path / "old")
    data_before = {f.name: (old.path / f.name).read_bytes() for f in old.files}
    keystore.rotate()
    assert EncryptedDataset.open(old.path, keystore).rewrap() == 2
    keystore.retire(1)
    reopened = EncryptedDataset.open(old.path, Keystore.open(keystore.directory, PASSPHRASE))
    assert reopened.read_table().equals(table)
    assert reopened.verify().rows == table.num_rows
    assert {f.name: (old.path / f.name).read_bytes() for f in old.files} == data_before
    assert inspect(old.path)["master_key_version"] == 2


def test_inspect_needs_no_key(dataset_dir):
    meta = inspect(dataset_dir)
    assert meta["num_rows"] == 7 and meta["num_files"] == 3 and meta["label"] == "label"
    assert meta["encryption"]["algorithm"] == "AES_GCM_V1" and meta["authenticated"] is False
    assert [c["name"] for c in meta["columns"]] == ["age", "weight", "city", "label"]
