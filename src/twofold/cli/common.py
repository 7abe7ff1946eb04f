"""Shared CLI plumbing: passphrases, keystores, progress bars and output."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from twofold.errors import ConfigError
from twofold.keys.keystore import PASSPHRASE_ENV, Keystore

err_console = Console(stderr=True)

keystore_option = click.option(
    "--keystore", "keystore_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The owner's keystore directory.",
)


def get_passphrase(confirm: bool = False) -> str:
    """The passphrase from TWOFOLD_PASSPHRASE, else from a hidden prompt on a terminal."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(f"no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be prompted")
    return click.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm, err=True)


def unlock(keystore_dir: Path) -> Keystore:
    return Keystore.open(keystore_dir, get_passphrase())


def debug_requested() -> bool:
    """Whether ``twofold --debug`` was given: full tracebacks, and the console as Spark makes it."""
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("debug"))


def info(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "rows") -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (hidden when stderr is not a terminal); yields an ``advance(n)``."""
    columns = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn(), TextColumn(unit)]
    with Progress(TextColumn("{task.description}"), BarColumn(), *columns, TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def step_progress(description: str) -> Iterator[Callable[[dict], None]]:
    """A rich progress bar fed by a server's heartbeats; yields ``update(progress)`` for {step, done, total}."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[step]}"), TimeElapsedColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=None, step="")

        def update(state: dict) -> None:
            if "done" in state:
                progress.update(task, completed=state["done"], total=state.get("total") or None,
                                step=str(state.get("step", "")))

        yield update
