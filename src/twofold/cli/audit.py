"""``twofold audit verify``: check the key broker's hash-chained audit log, and that it extends a recorded head."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _head(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _HEX64.fullmatch(value.lower()):
        raise click.BadParameter("a head is 64 hex digits (as `twofold audit verify` prints it)")
    return value.lower() if value is not None else None


@click.group()
def audit() -> None:
    """The key broker's audit log."""


@audit.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--expect-head", default=None, callback=_head, metavar="HEX",
              help="A head recorded earlier: the log must still reach it (it may have grown since).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_cmd(path: Path, expect_head: str | None, as_json: bool) -> None:
    """Verify the hash chain of the audit log at PATH; print its entries and head.

    Fails (exit status 3) if any entry was edited, deleted, inserted or moved, or if the log no longer reaches the
    head given with --expect-head. A chain alone cannot show that entries were cut off its end: record the head
    now and then, and pass it here later.
    """
    from twofold.kbs.audit import verify_chain

    head = verify_chain(path, expect_head)
    grew = None if head.earlier_entries is None else head.entries - head.earlier_entries
    if as_json:
        click.echo(json.dumps({"ok": True, "entries": head.entries, "head": head.head, "grew_by": grew}))
        return
    click.echo(f"ok: {head.entries} entries, head {head.head}")
    if grew:
        click.echo(f"the log grew by {grew} entr{'y' if grew == 1 else 'ies'} since head {expect_head}")
    elif grew == 0:
        click.echo("the head is the one expected")
