"""The key broker's audit log is a hash chain: every edit, deletion, insertion or reordering in the middle breaks
it, a reopened log continues it, and ``twofold audit verify`` reports it (the real command, through CliRunner)."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from twofold.cli import cli, main
from twofold.errors import ConfigError, IntegrityError
from twofold.kbs.audit import GENESIS, AuditLog, ChainHead, canonical, entry_hash, read_audit, verify_chain


def _log(path: Path, n: int = 5) -> list[str]:
    """A log of ``n`` entries; its lines."""
    with AuditLog(path) as log:
        for i in range(n):
            log.record("grant" if i % 2 else "deny", "unwrap", peer="127.0.0.1", dataset=f"ds-{i}", reason="r")
    return path.read_text().splitlines(keepends=True)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def _forge(entry: dict) -> str:
    """A line with its own hash correctly recomputed over ``entry``."""
    entry = {k: v for k, v in entry.items() if k != "hash"}
    return canonical({**entry, "hash": entry_hash(entry)}).decode() + "\n"


def test_entries_are_chained_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    assert all(later["prev"] == earlier["hash"] for earlier, later in itertools.pairwise(entries))
    assert verify_chain(path).entries == 5 and verify_chain(path).head == entries[-1]["hash"]
    assert read_audit(path) == entries  # the unverified reader still works
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert verify_chain(empty) == ChainHead(0, GENESIS)
    assert verify_chain(empty, GENESIS) == ChainHead(0, GENESIS, 0)


def test_fields_the_log_sets_cannot_be_given(tmp_path):
    with AuditLog(tmp_path / "audit.jsonl") as log, pytest.raises(ValueError, match="seq"):
        log.record("grant", "attest", seq=7)


def _edit_a_field(lines):
    entry = json.loads(lines[2])
    entry["dataset"] = "ds-other"
    return [*lines[:2], canonical(entry).decode() + "\n", *lines[3:]]


def _edit_and_rehash(lines):  # the edited entry's own hash is right; the next entry's prev no longer is
    entry = json.loads(lines[2])
    entry["event"] = "grant" if entry["event"] == "deny" else "deny"
    return [*lines[:2], _forge(entry), *lines[3:]]


def _insert_forged(lines):  # correct own hash and the seq of its place, but prev is not the previous entry's hash
    forged = _forge({**json.loads(lines[2]), "seq": 2, "prev": "ab" * 32, "dataset": "ds-stolen"})
    return [*lines[:2], forged, *lines[2:]]


def _insert_forged_renumbered(lines):  # even a forger who renumbers every later entry and rehashes it is caught
    out = [*lines[:2], _forge({**json.loads(lines[1]), "seq": 2, "dataset": "ds-stolen"})]
    for line in lines[2:]:
        entry = json.loads(line)
        out.append(_forge({**entry, "seq": entry["seq"] + 1}))
    return out


TAMPERS = {
    "edit a field": _edit_a_field,
    "edit and rehash": _edit_and_rehash,
    "reformat a line": lambda lines: [*lines[:1], json.dumps(json.loads(lines[1])) + "\n", *lines[2:]],
    "delete a line": lambda lines: lines[:2] + lines[3:],
    "delete the first line": lambda lines: lines[1:],
    "swap two lines": lambda lines: [lines[0], lines[2], lines[1], *lines[3:]],
    "insert a forged line": _insert_forged,
    "insert a forged line and renumber": _insert_forged_renumbered,
    "insert a blank line": lambda lines: [*lines[:2], "\n", *lines[2:]],
    "tear the last line": lambda lines: [*lines[:-1], lines[-1][:-10]],
}


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_every_tamper_in_the_middle_breaks_the_chain(tmp_path, tamper):
    path = tmp_path / "audit.jsonl"
    _write(path, tamper(_log(path)))
    with pytest.raises(IntegrityError, match="does not verify at line"):
        verify_chain(path)
    with pytest.raises(IntegrityError):  # and the broker refuses to append to it
        AuditLog(path)


def test_a_log_from_before_the_chain_is_refused(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps({"time": 1.0, "event": "grant", "action": "attest"}) + "\n")
    with pytest.raises(IntegrityError, match="not a chained entry"):
        AuditLog(path)


def test_a_cut_tail_shows_only_against_a_recorded_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    recorded = verify_chain(path).head
    _write(path, lines[:3])
    assert verify_chain(path).entries == 3  # a chain alone cannot see a clean cut ...
    with pytest.raises(IntegrityError, match="no longer reaches the head"):  # ... the recorded head can
        verify_chain(path, recorded)


def test_a_rewritten_tail_shows_only_against_a_recorded_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    recorded = verify_chain(path).head
    rewritten, prev = lines[:2], json.loads(lines[1])["hash"]
    for line in lines[2:]:  # the chain is not keyed: whoever can write the file can re-chain from any point
        entry = {k: v for k, v in json.loads(line).items() if k != "hash"}
        entry.update(prev=prev, dataset="ds-rewritten")
        rewritten.append(_forge(entry))
        prev = json.loads(rewritten[-1])["hash"]
    _write(path, rewritten)
    assert verify_chain(path).entries == 5
    with pytest.raises(IntegrityError, match="no longer reaches the head"):
        verify_chain(path, recorded)


def test_reopening_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    _log(path, 3)
    before = verify_chain(path)
    with AuditLog(path) as log:
        assert log.head == before
        log.record("grant", "attest", peer="127.0.0.1")
    entries = read_audit(path)
    assert entries[3]["seq"] == 3 and entries[3]["prev"] == before.head
    after = verify_chain(path, before.head)
    assert after.entries == 4 and after.earlier_entries == 3


def test_a_second_writer_is_refused(tmp_path):
    with AuditLog(tmp_path / "audit.jsonl"), pytest.raises(ConfigError, match="another writer"):
        AuditLog(tmp_path / "audit.jsonl")


def test_threads_recording_at_once_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        def many(t: int) -> None:
            for i in range(200):
                log.record("grant", "unwrap", thread=t, i=i)

        threads = [threading.Thread(target=many, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert verify_chain(path).entries == 1600


def test_cli_verify_reports_the_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    head = json.loads(lines[-1])["hash"]
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "verify", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: 5 entries, head {head}\n"
    result = runner.invoke(cli, ["audit", "verify", str(path), "--json"])
    assert json.loads(result.output) == {"ok": True, "entries": 5, "head": head, "grew_by": None}
    result = runner.invoke(cli, ["audit", "verify", str(path), "--expect-head", head.upper()])
    assert result.exit_code == 0 and "the head is the one expected" in result.output


def test_cli_verify_accepts_an_earlier_head_and_says_how_much_the_log_grew(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    earlier = json.loads(lines[2])["hash"]
    result = CliRunner().invoke(cli, ["audit", "verify", str(path), "--expect-head", earlier])
    assert result.exit_code == 0, result.output
    assert "the log grew by 2 entries since head" in result.output
    result = CliRunner().invoke(cli, ["audit", "verify", str(path), "--expect-head", GENESIS, "--json"])
    assert json.loads(result.output)["grew_by"] == 5


def test_cli_verify_fails_on_tamper_and_on_an_unknown_head(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    lines = _log(path)
    result = CliRunner().invoke(cli, ["audit", "verify", str(path), "--expect-head", "cd" * 32])
    assert result.exit_code != 0 and isinstance(result.exception, IntegrityError)
    result = CliRunner().invoke(cli, ["audit", "verify", str(path), "--expect-head", "not-hex"])
    assert result.exit_code == 2 and "64 hex digits" in result.output
    _write(path, lines[:1] + lines[2:])
    result = CliRunner().invoke(cli, ["audit", "verify", str(path)])
    assert result.exit_code != 0 and isinstance(result.exception, IntegrityError)
    # Through the entry point: one line on stderr, the exit status of an integrity failure.
    assert main(["audit", "verify", str(path)]) == IntegrityError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twofold: error: audit log") and "line 2" in err[0]
