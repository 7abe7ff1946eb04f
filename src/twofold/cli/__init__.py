"""The ``twofold`` command. Errors become one-line messages and exit codes; ``--debug`` shows tracebacks (and the
Spark console: JVM notices and Spark's own logs)."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from twofold import __version__
from twofold.cli.attest import attest, gramine
from twofold.cli.audit import audit
from twofold.cli.bench import bench, report
from twofold.cli.datasets import decrypt, encrypt, inspect_cmd, verify
from twofold.cli.demo import demo
from twofold.cli.he import he
from twofold.cli.keys import keys
from twofold.cli.spark import predict, train
from twofold.cli.tensors import encrypt_tensors
from twofold.cli.trust import enclave, kbs, policy, tcb
from twofold.errors import TwofoldError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="twofold")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors, and Spark's own console output.")
def cli(debug: bool) -> None:
    """twofold: train and serve models on infrastructure you do not trust."""


for command in (keys, encrypt, encrypt_tensors, inspect_cmd, verify, decrypt, tcb, kbs, audit, attest, gramine, enclave,
                policy, train, predict, he, bench, report, demo):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``twofold`` and ``python -m twofold``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # Warnings of the library (e.g. SIMULATION evidence) reach the user as formatted lines; servers reconfigure.
    logging.basicConfig(level=logging.WARNING, format="twofold: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cli.main(args=args, prog_name="twofold", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("twofold: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("twofold: interrupted", err=True)
        return 130
    except TwofoldError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"twofold: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:
        if type(exc).__module__.startswith(("pyspark", "py4j")):  # a Spark job failed: surface the typed cause
            from twofold.spark.errors import translate

            typed = translate(exc)
            if debug:
                traceback.print_exc()
            click.echo(f"twofold: error: {typed}", err=True)
            return typed.exit_code
        if debug:
            traceback.print_exc()
        # The message of an unexpected error may quote data; show only its type unless debugging.
        click.echo(f"twofold: internal error ({type(exc).__name__}); rerun with --debug for details", err=True)
        return 70
    return 0
