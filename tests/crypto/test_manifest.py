"""The typed dataset manifest: the v1 known-answer vector, Hypothesis round trips, tampering and strict parsing."""

from __future__ import annotations

import dataclasses
import hmac
import json
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twofold.crypto.document import Document
from twofold.crypto.mac import MAC_DOMAIN, canonical
from twofold.crypto.manifest import DATASET, Column, Encryption, FileEntry, Manifest, Schema
from twofold.errors import InputError, IntegrityError

VECTOR = Path(__file__).parent / "vectors" / "manifest-v1.json"  # written by the v1 writer before the typed form
VECTOR_KEY = bytes(range(32))
VECTOR_MAC = "540bacc9062e6989170d96868573f7d18f035b6a1b8404e43d9b655a0d60f0a0"
KEY = bytes(range(100, 132))

_ids = st.from_regex(r"ds-[0-9a-f]{16}", fullmatch=True)
_text = st.text(max_size=12)
_hex = st.text("0123456789abcdef", min_size=64, max_size=64)
_counts = st.integers(0, 2**53)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=8)

manifests = st.builds(
    Manifest,
    dataset_id=_ids,
    created=st.floats(0, 4e9) | st.integers(0, 2**32),
    label=st.none() | _text,
    num_rows=_counts,
    schema=st.builds(Schema, st.lists(st.builds(Column, _text, _text), max_size=4).map(tuple), _text),
    encryption=st.builds(Encryption, _text, _text, _text, st.integers(0, 512), st.booleans(), _text, _ids),
    files=st.lists(st.builds(FileEntry, _text, _counts, _counts, _hex, _hex), max_size=4).map(tuple),
    kms_instance_id=_text,
    wrapped_mac_key=_text,
    mac=_text,
    metadata=st.dictionaries(_text, _json, max_size=3),
)


def test_v1_vector_parses_re_renders_byte_for_byte_and_authenticates():
    raw = VECTOR.read_bytes()
    manifest = Manifest.from_bytes(raw)
    assert manifest.to_bytes() == raw
    assert manifest.mac == VECTOR_MAC == manifest.signed(VECTOR_KEY).mac
    body = json.loads(raw)["manifest"]  # any HMAC-SHA256 recomputes the tag from the stored JSON
    assert hmac.digest(VECTOR_KEY, MAC_DOMAIN + canonical(body), sha256).hex() == VECTOR_MAC
    assert manifest.authenticate(VECTOR_KEY) is manifest
    assert manifest.files[1] == FileEntry("part-00001.parquet", 1, 900, "cc" * 32, "dd" * 32)
    assert manifest.label == "y" and manifest.schema.columns[0] == Column("x", "double")
    assert manifest.encryption.master_key_id == manifest.dataset_id == "ds-0123456789abcdef"
    with pytest.raises(IntegrityError):
        manifest.authenticate(KEY)


@settings(max_examples=150, deadline=None)
@given(manifests)
def test_round_trip_through_the_json_form(manifest):
    raw = manifest.to_bytes()
    assert Manifest.from_bytes(raw) == manifest
    assert DATASET.parse(raw).body == manifest.body() == json.loads(raw)["manifest"]
    assert Manifest.from_document(manifest.document()) == manifest


@settings(max_examples=100, deadline=None)
@given(manifests, st.data())
def test_a_tampered_field_raises_integrity_error(manifest, data):
    signed = manifest.signed(KEY)
    assert Manifest.from_bytes(signed.to_bytes()).authenticate(KEY) == signed
    assert signed.with_mac_key("ks-other", "tfk1.rewrapped").authenticate(KEY)  # keys are outside the MAC
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(Manifest)
                                      if f.name not in ("kms_instance_id", "wrapped_mac_key")]))
    value = data.draw(_field_strategy(name).filter(lambda v: v != getattr(signed, name)))
    tampered = dataclasses.replace(signed, **{name: value})
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(tampered.to_bytes()).authenticate(KEY)


def _field_strategy(name: str) -> st.SearchStrategy:
    return manifests.map(lambda m: getattr(m, name))


@settings(max_examples=100, deadline=None)
@given(manifests, st.data())
def test_an_edited_leaf_of_the_stored_json_is_refused(manifest, data):
    doc = json.loads(manifest.signed(KEY).to_bytes())
    paths = list(_leaves(doc["manifest"], ()))
    path = data.draw(st.sampled_from(paths))
    _set(doc["manifest"], path, _changed(_get(doc["manifest"], path)))
    raw = json.dumps(doc).encode()
    if path[0] in ("format", "format_version", "kind", "dataset_id"):  # the shape itself: not a v1 manifest
        with pytest.raises((InputError, IntegrityError)):
            Manifest.from_bytes(raw).authenticate(KEY)
    else:
        with pytest.raises(IntegrityError):
            Manifest.from_bytes(raw).authenticate(KEY)


def _leaves(value, path):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _set(value, path, new):
    _get(value, path[:-1])[path[-1]] = new


def _changed(value):
    """Another value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1 if abs(value) < 2**52 else value / 2
    return "x" if value is None else value + "x"


def _vector_doc() -> dict:
    return json.loads(VECTOR.read_bytes())


@pytest.mark.parametrize("edit", [
    lambda doc: doc["manifest"].update(extra=1),
    lambda doc: doc.update(extra=1),
    lambda doc: doc["keys"].update(extra="x"),
    lambda doc: doc["manifest"]["files"][0].pop("tail_sha256"),
    lambda doc: doc["manifest"]["files"][0].update(rows=True),
    lambda doc: doc["manifest"]["files"][0].update(rows=2.0),
    lambda doc: doc["manifest"]["files"][0].update(rows="2"),
    lambda doc: doc["manifest"].update(files={}),
    lambda doc: doc["manifest"].update(kind="tensors"),
    lambda doc: doc["manifest"].update(dataset_id="ds-XYZ"),
    lambda doc: doc["manifest"]["encryption"].update(double_wrapping=1),
    lambda doc: doc["manifest"]["schema"]["columns"].append("x"),
    lambda doc: doc.update(mac=7),
    lambda doc: doc.update(manifest=[]),
])
def test_parsing_is_strict(edit):
    doc = _vector_doc()
    edit(doc)
    with pytest.raises(InputError, match="not a twofold dataset manifest"):
        Manifest.from_bytes(json.dumps(doc).encode())


def test_unknown_version_is_named():
    doc = _vector_doc()
    doc["manifest"].update(format_version=2, new_field=True)
    with pytest.raises(InputError, match="dataset format version 2 is not supported"):
        Manifest.from_bytes(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode())
       | st.dictionaries(st.sampled_from(["manifest", "keys", "mac"]), _json).map(lambda v: json.dumps(v).encode()))
def test_any_input_is_a_manifest_or_an_input_error(raw):
    try:
        manifest = Manifest.from_bytes(raw)
    except InputError:
        return
    assert manifest.to_bytes() == Manifest.from_bytes(manifest.to_bytes()).to_bytes()


def test_a_mac_that_is_not_ascii_is_an_integrity_error():
    manifest = Manifest.from_bytes(VECTOR.read_bytes())
    for mac in ("é" * 64, "\ud800", ""):
        with pytest.raises(IntegrityError):
            dataclasses.replace(manifest, mac=mac).authenticate(VECTOR_KEY)


def test_document_is_the_shape_shared_with_tensor_headers():
    from twofold.data.tensors import TENSORS

    body = {"format": TENSORS.name, "format_version": 1, "dataset_id": "ds-0123456789abcdef", "num_rows": 3}
    document = Document(body, "ks-0123456789abcdef", "tfk1.wrapped", "00" * 16)
    raw = TENSORS.render(document)
    assert set(json.loads(raw)) == {"header", "keys", "tag"} and TENSORS.parse(raw) == document
    with pytest.raises(InputError, match="not a twofold dataset manifest"):
        DATASET.parse(raw)
    with pytest.raises(InputError, match="tensor dataset format version 9"):
        TENSORS.parse(TENSORS.render(dataclasses.replace(document, body={**body, "format_version": 9})))
