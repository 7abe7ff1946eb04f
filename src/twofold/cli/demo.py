"""``twofold demo``: the main job on the embedded default."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's files here instead of a temporary directory.")
def demo(workdir: Path | None) -> None:
    """Run the narrated end-to-end demo on this machine."""
    from twofold import demo as demo_module

    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    demo_module.run(workdir)
