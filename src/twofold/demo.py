"""The main job, narrated: what `make demo` runs on the embedded default (everything on this machine)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from twofold.crypto.kdf import Argon2Params
from twofold.data import EncryptedDataset, inspect
from twofold.keys.keystore import Keystore

DEMO_PASSPHRASE = "twofold demo passphrase"


def breast_cancer_table() -> pa.Table:
    """scikit-learn's breast cancer table (569 x 30) with a ``label`` column."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "label"})
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return pa.Table.from_pandas(frame, preserve_index=False)


class Narrator:
    """Numbered, timed steps on the console."""

    def __init__(self, console: Console) -> None:
        self.console, self.step_no, self.start = console, 0, time.perf_counter()

    def step(self, title: str, action: Callable[[], str]) -> None:
        self.step_no += 1
        with self.console.status(f"[bold]{self.step_no}. {title}[/bold] ..."):
            began = time.perf_counter()
            outcome = action()
        self.console.print(f"[bold green]{self.step_no}. {title}[/bold green] "
                           f"[dim]({time.perf_counter() - began:.1f} s)[/dim]\n   {outcome}")


def run(workdir: Path | None = None, console: Console | None = None) -> None:
    """Run the demo in ``workdir`` (a fresh temporary directory by default), removing what it created."""
    console = console or Console()
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="twofold-demo-")) if own_dir else Path(workdir)
    narrator = Narrator(console)
    state: dict[str, object] = {}
    try:
        console.rule("twofold demo (embedded default: everything on this machine)")

        def create_keys() -> str:
            store = Keystore.create(root / "owner-keys", DEMO_PASSPHRASE, Argon2Params(memory_kib=32 * 1024))
            state["store"] = store
            return f"keystore {store.keystore_id}: master key v{store.active_version}, Argon2id + AES-256-GCM"

        def encrypt() -> str:
            table = breast_cancer_table()
            state["table"] = table
            dataset = EncryptedDataset.write(table, root / "breast-cancer.enc", state["store"], label="label",
                                             rows_per_file=200)
            meta = inspect(dataset.path)
            return (f"breast cancer table ({table.num_rows} x {table.num_columns}) -> {meta['num_files']} "
                    f"Parquet files, {meta['encryption']['algorithm']}, encrypted footers, {meta['dataset_id']}")

        def verify() -> str:
            report = EncryptedDataset.open(root / "breast-cancer.enc", state["store"]).verify()
            return f"manifest and {report.files} files authenticated ({report.rows} rows)"

        def decrypt() -> str:
            table = EncryptedDataset.open(root / "breast-cancer.enc", state["store"]).read_table()
            same = table.equals(state["table"])
            return f"decrypted with the owner's key: {'identical to the input' if same else 'MISMATCH'}"

        narrator.step("Owner keys created", create_keys)
        narrator.step("Dataset encrypted on the owner's machine", encrypt)
        narrator.step("Dataset verified", verify)
        narrator.step("Dataset decrypted by its owner", decrypt)
        console.rule(f"done in {time.perf_counter() - narrator.start:.1f} s")
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
