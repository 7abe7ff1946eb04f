"""The main job, narrated: what `make demo` runs on the embedded default (everything on this machine).

Owner keys -> an encrypted dataset -> key broker and enclave (simulation) -> partitioned logistic regression on
Spark beside vanilla MLlib -> two-server naive Bayes over DT-PKC -> encrypted PyTorch training (if installed).
Everything it starts is stopped, and its files are removed, even when interrupted.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console

from twofold.crypto.kdf import Argon2Params
from twofold.data import EncryptedDataset, inspect
from twofold.keys.keystore import Keystore

DEMO_PASSPHRASE = "twofold demo passphrase"
LOGREG = {"maxIter": 100, "regParam": 0.01}


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

    def skip(self, title: str, why: str) -> None:
        self.step_no += 1
        self.console.print(f"[bold yellow]{self.step_no}. {title}: skipped[/bold yellow] ({why})")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (stopping services, removing files) runs."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(workdir: Path | None = None, console: Console | None = None, he_key_bits: int = 2048,
        quiet: bool = True) -> None:
    """Run the demo in ``workdir`` (a fresh temporary directory by default), removing what it created; ``quiet``
    keeps Spark's console quiet (see :func:`twofold.spark.get_spark`)."""
    console = console or Console()
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="twofold-demo-")) if own_dir else Path(workdir)
    narrator = Narrator(console)
    state: dict[str, Any] = {"quiet": quiet}
    try:
        with _terminate_as_interrupt():
            console.rule("twofold demo: embedded default (local Spark, SIMULATED enclave, loopback services)")
            narrator.step("Owner keys created", lambda: _create_keys(root, state))
            narrator.step("Dataset encrypted on the owner's machine", lambda: _encrypt(root, state))
            _with_services(root, state, narrator, he_key_bits)
            console.rule(f"done in {time.perf_counter() - narrator.start:.1f} s; everything started was stopped")
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/bold red]: services stopped and demo files removed")
        raise
    finally:
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _create_keys(root: Path, state: dict[str, Any]) -> str:
    store = Keystore.create(root / "owner-keys", DEMO_PASSPHRASE, Argon2Params(memory_kib=32 * 1024))
    state["store"] = store
    return f"keystore {store.keystore_id}: master key v{store.active_version} (Argon2id + AES-256-GCM), mode 0600"


def _encrypt(root: Path, state: dict[str, Any]) -> str:
    table = breast_cancer_table()
    state["table"] = table
    dataset = EncryptedDataset.write(table, root / "breast-cancer.enc", state["store"], label="label",
                                     rows_per_file=150)
    state["dataset"] = dataset
    meta = inspect(dataset.path)
    return (f"scikit-learn's breast cancer table ({table.num_rows} x {table.num_columns}) -> {meta['num_files']} "
            f"Parquet files ({meta['encryption']['algorithm']}, encrypted footers) + authenticated manifest")


def _with_services(root: Path, state: dict[str, Any], narrator: Narrator, he_key_bits: int) -> None:
    from twofold.enclave.measure import current_measurement
    from twofold.spark.embedded import job_services

    torch_ok = _torch_available()
    extra, datasets = [], [str(state["dataset"].path)]
    if torch_ok:
        from twofold.torch.measure import training_measurement

        state["tensors"] = _encrypt_digits(root, state["store"])
        extra.append(training_measurement())
        datasets += [state["tensors"]["train_id"], state["tensors"]["test_id"]]
    began = time.perf_counter()
    with job_services(datasets, mode="partitioned", release="sealed", keystore_dir=state["store"].directory,
                      passphrase=DEMO_PASSPHRASE, keystore=state["store"], extra_measurements=extra) as services:
        state["services"] = services
        narrator.step("Key broker and enclave started", lambda: (
            f"in {time.perf_counter() - began:.1f} s: key broker {services.kbs_url} (owner side; policy: this "
            "installation's measurements only); "
            f"enclave measurement {current_measurement()[:16]}... attested. Backend: SIMULATION "
            f"(process isolation and the real protocol, no hardware memory protection)"))
        narrator.step("Partitioned logistic regression on Spark, beside vanilla MLlib", lambda: _spark(state))
        if torch_ok:
            narrator.step("Encrypted PyTorch training (decrypted only on the training device)", lambda: _torch(state))
        else:
            narrator.skip("Encrypted PyTorch training", "torch is not installed: pip install 'twofold[torch]'")
    narrator.step("Two-server naive Bayes over DT-PKC (MU and SU as TLS servers)", lambda: _he(he_key_bits))


def _spark(state: dict[str, Any]) -> str:
    from pyspark.ml.classification import LogisticRegression as MllibLogisticRegression

    from twofold.enclave.kernels.base import find_algorithm
    from twofold.spark import jobs
    from twofold.spark.session import get_spark

    services, dataset, table = state["services"], state["dataset"], state["table"]
    spark = get_spark(quiet=state["quiet"], whole_mode=True)  # the vanilla MLlib baseline puts plaintext in Spark
    columns = [c for c in table.column_names if c != "label"]
    vanilla_frame = jobs.assemble(spark.createDataFrame(table.to_pandas()), columns).cache()
    vanilla = MllibLogisticRegression(labelCol="label", **LOGREG).fit(vanilla_frame)
    result = jobs.train(spark, dataset.path, "logreg", "partitioned", "sealed", services.enclave, LOGREG)
    weights = result.model.open_arrays(state["store"])  # the owner opens the sealed model
    X = np.column_stack([table.column(c).to_numpy() for c in columns]).astype(float)
    y = table.column("label").to_numpy()
    ours = float(np.mean(find_algorithm("logreg").predict(weights, X, {}) == y))
    mllib = float(vanilla.summary.accuracy)
    audit = len((services.workdir / "kbs-audit.jsonl").read_text().splitlines())
    return (f"release=sealed: the Spark side saw only ciphertext and sealed statistics ({result.passes} passes)\n"
            f"   training accuracy: twofold {ours:.4f}  vs  vanilla MLlib {mllib:.4f}   "
            f"(key broker audit log: {audit} entries)")


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _encrypt_digits(root: Path, store: Keystore) -> dict[str, str]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from twofold.data.tensors import write_tensors

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split((x / 16.0).astype(np.float32), y.astype(np.int64),
                                                        test_size=0.25, random_state=0)
    out = {}
    for part, (xs, ys) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        info = write_tensors({"x": xs, "y": ys}, root / f"digits-{part}.tfds", store)
        out[part], out[f"{part}_id"] = str(info.path), info.dataset_id
    out["plain"] = (x_train, y_train, x_test, y_test)
    return out


def _torch(state: dict[str, Any]) -> str:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from twofold.torch import EncryptedDataLoader, EncryptedTensorDataset
    from twofold.torch.keys import DeviceKeyProvider

    x_train, y_train, x_test, y_test = state["tensors"]["plain"]
    keys = DeviceKeyProvider(state["services"].broker)  # the training process attests for the data key

    def train(dataset: Any, test: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        began = time.perf_counter()
        for _ in range(15):
            for xb, yb in EncryptedDataLoader(dataset, batch_size=64, shuffle=True,
                                              generator=torch.Generator().manual_seed(0)):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
        with torch.no_grad():
            accuracy = (model(test[0]).argmax(1) == test[1]).float().mean().item()
        return accuracy, time.perf_counter() - began

    plain_acc, plain_s = train(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                               (torch.from_numpy(x_test), torch.from_numpy(y_test)))
    encrypted = EncryptedTensorDataset(state["tensors"]["train"], keys, "cpu")
    test = EncryptedTensorDataset(state["tensors"]["test"], keys, "cpu").tensors
    enc_acc, enc_s = train(encrypted, test)
    return (f"digits MLP, same seed: accuracy plaintext {plain_acc:.4f} vs encrypted {enc_acc:.4f}; "
            f"time {plain_s:.2f} s vs {enc_s:.2f} s (CPU: 'device' memory is host memory, simulation)")


def _he(key_bits: int) -> str:
    from twofold.bench import he

    result = he.run("breast_cancer", None, ["nb"], key_bits, max_queries=20, latency_queries=2, pool=600)
    nb = result["results"][0]
    return (f"{key_bits}-bit keys, 2 data owners: trained in {nb['train_seconds']:.1f} s, "
            f"{nb['infer_seconds_per_query']:.2f} s per encrypted query; on {nb.get('queries', 20)} held-out "
            f"encrypted queries accuracy {nb['accuracy']:.4f} vs plaintext {nb['plaintext_accuracy']:.4f}\n"
            f"   bandwidth: MU<->SU {nb['bytes_mu_su'] / 1e6:.2f} MB, "
            f"owners->MU {nb['bytes_owner_mu'] / 1e6:.2f} MB (measured at the TLS links)")
