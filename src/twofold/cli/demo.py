"""``twofold demo``: the main job on the embedded default."""

from __future__ import annotations

from pathlib import Path

import click

from twofold.cli.common import debug_requested


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's files here instead of a temporary directory.")
@click.option("--he-key-bits", type=click.Choice(["1024", "2048", "3072"]), default="2048", show_default=True,
              help="DT-PKC modulus size for the two-server step (below 2048 bits is for quick checks only).")
def demo(workdir: Path | None, he_key_bits: str) -> None:
    """Run the narrated end-to-end demo on this machine."""
    from twofold import demo as demo_module

    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    demo_module.run(workdir, he_key_bits=int(he_key_bits), quiet=not debug_requested())
