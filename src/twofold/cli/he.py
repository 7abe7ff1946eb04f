"""``twofold he``: the two-server homomorphic learning service (MU and SU), its parties, and ``bench he``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from twofold.cli.common import info, progress_bar, step_progress

if TYPE_CHECKING:
    from twofold.he.client import Party

system_option = click.option("--system", "system_dir", required=True,
                             type=click.Path(file_okay=False, path_type=Path), help="The HE system directory.")
model_option = click.option("--model", "--algorithm", "model", type=click.Choice(["nb", "lr", "dt"]), default="nb",
                            show_default=True)
mu_option = click.option("--mu", "mu_address", default="127.0.0.1:7700", show_default=True,
                         help="MU address HOST:PORT.")
peer_timeout_option = click.option(
    "--peer-timeout", type=click.FloatRange(1, 3600), default=15.0, show_default=True, envvar="TWOFOLD_PEER_TIMEOUT",
    help="Seconds of silence after which a server counts as frozen or gone (servers send heartbeats meanwhile).")


def _party(system_dir: Path, name: str, mu_address: str, peer_timeout: float) -> Party:
    from twofold.he.client import Party

    return Party(_open(system_dir), name, mu_address, peer_timeout=peer_timeout)


def _open(system_dir: Path):
    from twofold.he.keys import load_system

    system = load_system(system_dir)
    if system.warning():
        info(system.warning())
    return system


@click.group()
def he() -> None:
    """Two-server homomorphic learning over DT-PKC (Priv-NB, Priv-LR, Priv-DT)."""


@he.command("init")
@click.option("--system", "--dir", "system_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The HE system directory to create.")
@click.option("--key-bits", type=int, default=2048, show_default=True, help="Bits of the DT-PKC modulus N.")
@click.option("--insecure-small-keys", is_flag=True, help="Allow keys below 2048 bits (tests only; insecure).")
def init(system_dir: Path, key_bits: int, insecure_small_keys: bool) -> None:
    """Create the system keys, the MU and SU key shares, the CA and the servers' certificates."""
    from twofold.he.keys import init_system

    system = init_system(system_dir, key_bits, allow_insecure=insecure_small_keys)
    if system.warning():
        info(system.warning())
    info(f"created HE system in {system_dir} ({key_bits}-bit N); MU share in mu/, SU share in su/, admin enrolled")


@he.command("enroll")
@system_option
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["owner", "client", "admin"]), required=True)
def enroll_cmd(system_dir: Path, name: str, role: str) -> None:
    """Give a data owner, client or operator its own DT-PKC key pair and a TLS certificate from the CA."""
    from twofold.he.keys import enroll

    path = enroll(_open(system_dir), name, role)
    info(f"enrolled {role} {name} in {path}")


@he.command("schema")
@system_option
@click.argument("data", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--label", required=True, help="Label column.")
@click.option("--bins", type=click.IntRange(2, 255), default=5, show_default=True)
def schema_cmd(system_dir: Path, data: Path, label: str, bins: int) -> None:
    """Write the public binning (equal-frequency edges of DATA) that owners, clients and MU share."""
    from twofold.he.client import read_table
    from twofold.he.models import lr
    from twofold.he.models.nb import fit_schema

    system = _open(system_dir)
    features, rows, labels = read_table(data, label)
    schema = fit_schema(features, label, rows, labels, bins)
    (system.public / "schema.json").write_text(schema.to_json() + "\n")
    info(f"schema: {len(features)} features x {bins} bins, classes {', '.join(schema.classes)}")
    if len(schema.classes) == 2:
        (system.public / "lr.json").write_text(lr.fit_schema(features, label, rows, labels).to_json() + "\n")
        info("standardization for Priv-LR written to public/lr.json")


@he.command("serve")
@click.option("--role", type=click.Choice(["mu", "su"]), required=True)
@system_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), required=True)
@click.option("--su", "su_address", default=None, help="SU address HOST:PORT (MU only).")
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MU state directory (default SYSTEM/mu-state).")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--pool", type=click.IntRange(0), default=0, show_default=True,
              help="Encryption pairs to keep precomputed by a background process.")
@click.option("--lr-pool", type=click.IntRange(0), default=0, show_default=True,
              help="Priv-LR randomness values (T1 only) to keep precomputed by a background process.")
@click.option("--heartbeat", type=click.FloatRange(0.05, 600), default=5.0, show_default=True,
              help="Seconds between the heartbeats sent while a request is being worked on.")
@peer_timeout_option
@click.option("--max-connections", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Links served at once; more are closed at accept.")
@click.option("--exit-after", type=int, default=None, hidden=True, help="Fault injection: SU exits after N requests.")
def serve(role: str, system_dir: Path, host: str, port: int, su_address: str | None, state: Path | None,
          threads: int, pool: int, lr_pool: int, heartbeat: float, peer_timeout: float,
          max_connections: int, exit_after: int | None) -> None:
    """Run MU or SU until interrupted; prints `ready HOST:PORT` once it accepts connections."""
    from twofold.he.server import run
    from twofold.he.transport import Timing

    run(role, _open(system_dir), host, port, su_address=su_address, state=state, threads=threads, pool=pool,
        exit_after=exit_after, lr_pool=lr_pool,
        timing=Timing(heartbeat=heartbeat, peer_timeout=peer_timeout), max_connections=max_connections)


@he.command("upload")
@system_option
@mu_option
@click.option("--owner", required=True, help="Enrolled owner name.")
@click.argument("data", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--label", required=True)
@click.option("--chunk-records", type=click.IntRange(1), default=64, show_default=True)
@model_option
@peer_timeout_option
def upload(system_dir: Path, mu_address: str, owner: str, data: Path, label: str, chunk_records: int,
           model: str, peer_timeout: float) -> None:
    """Encrypt DATA's records under the owner's key and upload them to MU (for one model's encoding)."""
    party = _party(system_dir, owner, mu_address, peer_timeout)
    with progress_bar("encrypting and uploading", None) as advance:
        result = party.upload(data, label, chunk_records=chunk_records, model=model, progress=advance)
    info(f"uploaded; {owner} now has {result['records']} records in {result['chunks']} chunks "
         f"({party.stats.sent} bytes sent)")


@he.command("train")
@system_option
@mu_option
@model_option
@click.option("--admin", default="admin", show_default=True)
@click.option("--chunk", type=click.IntRange(1), default=256, show_default=True, help="Table entries per SU round.")
@click.option("--iterations", type=click.IntRange(0), default=0,
              help="lr: gradient steps (default 10); they continue from the stored encrypted weights.")
@click.option("--fresh", is_flag=True,
              help="lr: start from zero weights instead of the stored model; dt: rebuild the tree over all records "
                   "instead of updating the stored one.")
@click.option("--depth", type=click.IntRange(1, 4), default=None,
              help="dt: tree depth (default: the stored model's, else 2); another depth than the model's rebuilds.")
@peer_timeout_option
def train(system_dir: Path, mu_address: str, model: str, admin: str, chunk: int, iterations: int,
          fresh: bool, depth: int | None, peer_timeout: float) -> None:
    """Ask MU to train a model over all uploaded data: resume an interrupted run, warm-start lr from its stored
    weights, update a stored dt with the records it does not hold yet (its splits stay; --fresh rebuilds).

    Interrupting this command (or `twofold he cancel`) stops the run at its next saved step."""
    body = {"model": model, "chunk": chunk, "iterations": (depth or 0) if model == "dt" else iterations,
            "fresh": fresh}
    with step_progress(f"training {model}") as update:
        result = _party(system_dir, admin, mu_address, peer_timeout).request("train", body, on_progress=update)
    mode = result.get("mode", "full")
    link = f"MU-SU {result['bytes_mu_su']} bytes"
    if mode == "unchanged":
        info(f"{model} is up to date: no records since the last training ({result['records']} records from "
             f"{result['owners']} owner(s)); nothing to do (--fresh rebuilds the tree)")
    elif mode == "update":
        info(f"updated {model} with {result['new_records']} new records (now {result['records']} records from "
             f"{result['owners']} owner(s); splits unchanged, --fresh rebuilds them) in {result['seconds']:.2f} s; "
             f"{link}")
    else:
        why = f" (rebuilt: {result['reason']})" if result.get("reason") else ""
        at = result.get("resumed_at_iteration")
        resumed = f" (resumed after iteration {at})" if at else " (resumed)" if result["resumed"] else ""
        info(f"trained {model} on {result['records']} records from {result['owners']} owner(s) in "
             f"{result['seconds']:.2f} s{resumed}{why}; {link}")


@he.command("predict")
@system_option
@mu_option
@click.option("--client", "client_name", required=True, help="Enrolled client name.")
@model_option
@click.argument("data", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--label", default=None, help="If given, report accuracy against this column.")
@click.option("--batch", type=click.IntRange(1, 4096), default=16, show_default=True)
@peer_timeout_option
def predict(system_dir: Path, mu_address: str, client_name: str, model: str, data: Path, label: str | None,
            batch: int, peer_timeout: float) -> None:
    """Classify DATA's rows with encrypted queries; print one predicted class per line."""
    from twofold.he.client import read_csv

    party = _party(system_dir, client_name, mu_address, peer_timeout)
    schema = party.schema(model)
    rows, labels = read_csv(data, schema.features, label)
    with progress_bar("querying", len(rows)) as advance:
        predictions = party.predict(rows, model=model, batch=batch, progress=advance)
    for p in predictions:
        click.echo(p)
    if labels is not None:
        acc = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
        info(f"accuracy {acc:.4f} on {len(labels)} rows")


@he.command("status")
@system_option
@mu_option
@click.option("--admin", default="admin", show_default=True)
@peer_timeout_option
def status(system_dir: Path, mu_address: str, admin: str, peer_timeout: float) -> None:
    """Show MU's owners, models, link byte counters and the current (or last) training run."""
    import json

    result = _party(system_dir, admin, mu_address, peer_timeout).request("status", {})
    click.echo(json.dumps(result, indent=2, sort_keys=True))


@he.command("cancel")
@system_option
@mu_option
@click.option("--admin", default="admin", show_default=True)
@peer_timeout_option
def cancel(system_dir: Path, mu_address: str, admin: str, peer_timeout: float) -> None:
    """Stop the running training at its next saved step (rerun train to resume it)."""
    result = _party(system_dir, admin, mu_address, peer_timeout).request("cancel", {})
    run = result["run"]
    info(f"cancelling the {run['model']} run (step {run['progress'].get('step', '-')}, "
         f"{run['progress'].get('done', 0)} of {run['progress'].get('total', '?')} done)")


@click.command("he")
@click.option("--dataset", default="breast_cancer", show_default=True,
              help="breast_cancer, wine, digits or csv:PATH.")
@click.option("--label", default=None, help="Label column for csv: datasets.")
@click.option("--algorithms", default="nb", show_default=True, help="Comma-separated; implemented: nb, lr, dt.")
@click.option("--key-bits", type=int, default=2048, show_default=True)
@click.option("--bins", type=click.IntRange(2, 255), default=5, show_default=True)
@click.option("--max-queries", type=click.IntRange(1), default=None,
              help="Encrypted queries (default: the whole test split).")
@click.option("--pool", type=click.IntRange(0), default=2500, show_default=True,
              help="Encryption pairs MU and SU precompute offline before training (with lr also the whole "
                   "run's Priv-LR randomness; 0: no offline phase).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench_he(dataset: str, label: str | None, algorithms: str, key_bits: int, bins: int, max_queries: int | None,
             pool: int, json_path: Path | None) -> None:
    """MU and SU as separate TLS server processes on loopback: measured times, bytes and accuracy."""
    from twofold.bench import he as bench
    from twofold.bench.common import write_json

    result = bench.run(dataset, label, [a.strip() for a in algorithms.split(",") if a.strip()], key_bits, bins=bins,
                       max_queries=max_queries, pool=pool, log=info)
    for row in result["results"]:
        info(f"{row['algorithm']}: train {row['train_seconds']:.2f} s, infer {row['infer_seconds_per_query']:.3f} "
             f"s/query, accuracy {row['accuracy']:.4f} (plaintext {row['plaintext_accuracy']:.4f})")
    write_json(json_path, result)
