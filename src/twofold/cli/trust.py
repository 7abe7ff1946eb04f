"""``twofold tcb | kbs serve | kbs identity | enclave serve | enclave platform-key | policy init``."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from pathlib import Path

import click

from twofold.cli.common import info, keystore_option, unlock
from twofold.errors import ConfigError
from twofold.services import READY_PREFIX


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--files", "show_files", is_flag=True, help="List the files of the TCB.")
def tcb(as_json: bool, show_files: bool) -> None:
    """Print the trusted code base's measurement and size beside the whole project's."""
    from twofold.enclave.measure import tcb_report

    report = tcb_report()
    if as_json:
        click.echo(json.dumps({"measurement": report.measurement, "tcb_lines": report.tcb_lines,
                               "total_lines": report.total_lines, "tcb_files": len(report.files),
                               "files": report.files}, indent=2))
        return
    click.echo(f"measurement  {report.measurement}")
    click.echo(f"TCB          {len(report.files)} files, {report.tcb_lines} lines of code")
    click.echo(f"project      {report.total_lines} lines of code "
               f"(TCB is {100 * report.tcb_lines / report.total_lines:.1f}%)")
    if show_files:
        for name in report.files:
            click.echo(f"  {name}")


def _serve_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"twofold {name}: %(levelname)s %(message)s", force=True)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


@click.group()
def kbs() -> None:
    """The owner's key broker service."""


@kbs.command("serve")
@keystore_option
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8650, show_default=True, help="0 picks a free port.")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append-only audit log (default: kbs-audit.jsonl in the keystore directory).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA of --tls-cert, as named in the broker identity that enclaves pin (twofold kbs identity).")
@click.option("--auth-burst", type=click.IntRange(min=1), default=None,
              help="Challenges one client address may take at once [default: 200].")
@click.option("--auth-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Challenges per second a client address earns back [default: 100].")
@click.option("--max-pending-per-address", type=click.IntRange(min=1), default=None,
              help="Pending challenges per client address; a new one evicts its oldest [default: 256].")
@click.option("--max-pending", type=click.IntRange(min=1), default=None,
              help="Pending challenges in all; when full, the address holding the most loses its oldest "
                   "[default: 10000].")
@click.option("--max-grants", type=click.IntRange(min=1), default=None,
              help="Live tokens; when full, the oldest is dropped and its enclave attests again [default: 100000].")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Requests handled at once; beyond it the broker answers 503 [default: 512].")
def kbs_serve(keystore_dir: Path, policy_path: Path, host: str, port: int, audit_log: Path | None,
              tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, **limits: float | None) -> None:
    """Serve attestation-gated key release until interrupted."""
    from twofold.kbs.audit import AuditLog
    from twofold.kbs.policy import load_policy
    from twofold.kbs.server import KeyBroker, Limits, serve

    _serve_logging("kbs")
    bounds = Limits(**{name: value for name, value in limits.items() if value is not None})  # type: ignore[arg-type]
    policy = load_policy(policy_path)
    store = unlock(keystore_dir)
    context = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    audit = AuditLog(audit_log or keystore_dir / "kbs-audit.jsonl")
    if policy.allow_simulation:
        logging.getLogger("twofold.kbs").warning("policy allows SIMULATION evidence (no hardware protection)")

    def ready(url: str) -> None:
        click.echo(f"{READY_PREFIX}{url}")
        click.get_text_stream("stdout").flush()
        info(f"key broker for keystore {store.keystore_id} listening on {url}")

    try:
        broker = KeyBroker(store, policy, audit, bounds, tls_ca=tls_ca.read_text() if tls_ca else "")
        asyncio.run(serve(broker, host, port, context, ready))
    except KeyboardInterrupt:
        pass
    finally:
        audit.close()


@kbs.command("identity")
@keystore_option
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA that signs the broker's TLS certificate (required for an https broker).")
def kbs_identity(keystore_dir: Path, out: Path, tls_ca: Path | None) -> None:
    """Write the key broker's identity, which enclaves pin (give it to `enclave serve --broker-identity`)."""
    identity = unlock(keystore_dir).broker_identity(tls_ca.read_text() if tls_ca else "")
    out.write_text(identity.to_json())
    info(f"wrote broker identity {out} (keystore {identity.keystore_id}, digest {identity.digest()[:16]}...)")


@click.group()
def enclave() -> None:
    """The enclave runtime (simulation, or SEV-SNP/TDX through configfs-tsm, SGX through Gramine)."""


@enclave.command("serve")
@click.option("--socket", "socket_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kbs", "kbs_url", required=True, help="URL of the owner's key broker (https://, or http:// on "
              "loopback).")
@click.option("--broker-identity", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The key broker's identity as its owner issued it (twofold kbs identity).")
@click.option("--backend", type=click.Choice(["auto", "simulation", "sev-snp", "tdx", "sgx"]), default="auto",
              show_default=True, help="Attestation backend; auto uses this machine's hardware and never simulation.")
@click.option("--platform-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Simulated platform key (default: $TWOFOLD_HOME/simulation/platform-ed25519.pem).")
@click.option("--cache-mib", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Plaintext partition cache budget.")
@click.option("--idle-exit", type=click.IntRange(min=1), default=None, help="Exit after this many idle seconds.")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(min=0.05, max=60.0), default=5.0,
              show_default=True, help="Seconds between busy-heartbeats sent while an ecall runs.")
@click.option("--max-connections", type=click.IntRange(min=1, max=4096), default=64, show_default=True,
              help="Connections served at once; more are refused with an error.")
def enclave_serve(socket_path: Path, kbs_url: str, broker_identity: Path, backend: str, platform_key: Path | None,
                  cache_mib: int, idle_exit: int | None, heartbeat_s: float, max_connections: int) -> None:
    """Attest to the key broker, then serve ecalls on a Unix socket until terminated.

    The enclave runs as its own minimal program (``python -I -B -m twofold.enclave``, clean environment): this
    command replaces itself with it, so nothing of the CLI is loaded where plaintext is.
    """
    import os

    from twofold.services import enclave_command

    extra = [*(["--platform-key", str(platform_key)] if platform_key else []),
             *(["--idle-exit", str(idle_exit)] if idle_exit else []),
             "--heartbeat", str(heartbeat_s), "--max-connections", str(max_connections)]
    command, env = enclave_command(socket_path, kbs_url, broker_identity, cache_mib=cache_mib, backend=backend,
                                   extra=tuple(extra))
    os.execve(command[0], command, env)  # noqa: S606 - the enclave replaces this process, by design


@enclave.command("platform-key")
@click.option("--platform-key", type=click.Path(dir_okay=False, path_type=Path), default=None)
def platform_key_cmd(platform_key: Path | None) -> None:
    """Print this machine's simulated platform public key (for a policy's simulation_platform_keys)."""
    from twofold.enclave.attester import load_or_create_platform_key

    key = load_or_create_platform_key(platform_key)
    click.echo(base64.b64encode(key.public_key().public_bytes_raw()).decode())


@click.group()
def policy() -> None:
    """Key-release policies."""


@policy.command("init")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", "datasets", multiple=True, required=True,
              help="Dataset id (or directory, or '*') the enclave may open; repeatable.")
@click.option("--measurement", default="current", show_default=True,
              help="Allowed measurement: 'current' (partitioned TCB), 'whole', 'both', or SHA-256 hex digests.")
@click.option("--allow-simulation", is_flag=True, help="Accept simulation evidence (no hardware protection).")
@click.option("--platform-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trust this machine's simulated platform key (default location if omitted).")
@click.option("--expires", default=None, help="ISO 8601 expiry of the grant.")
@click.option("--release", "releases", multiple=True, type=click.Choice(["sealed", "statistics"]),
              default=("sealed",), show_default=True,
              help="What may leave the enclave: sealed results only, or also the trained model (repeatable).")
@click.option("--backend", type=click.Choice(["simulation", "sev-snp", "tdx", "sgx"]), default="simulation",
              show_default=True, help="The attestation backend the enclaves use.")
@click.option("--platform-measurement", "platform_measurements", multiple=True,
              help="Hardware backends: an allowed launch measurement (SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE), "
                   "hex; repeatable.")
@click.option("--collateral", type=click.Path(exists=True, path_type=Path), default=None,
              help="Hardware backends: the local collateral (SNP: certificate directory; TDX/SGX: "
                   "QuoteCollateralV3 JSON; see twofold attest collateral).")
def policy_init(out: Path, datasets: tuple[str, ...], measurement: str, allow_simulation: bool,
                platform_key: Path | None, expires: str | None, releases: tuple[str, ...], backend: str,
                platform_measurements: tuple[str, ...], collateral: Path | None) -> None:
    """Write a policy that lets one measurement open the given datasets."""
    from twofold.kbs.authoring import write_policy

    platform = None
    if backend != "simulation":
        if not (platform_measurements and collateral):
            raise ConfigError(f"--backend {backend} needs --platform-measurement and --collateral")
        platform = {"collateral": str(collateral.resolve()), "measurements": list(platform_measurements)}
    write_policy(out, datasets, measurement, allow_simulation, platform_key, expires, release=releases,
                 backend=backend, platform=platform)
    info(f"wrote policy {out}")


@click.command("keystore-check", hidden=True)
@keystore_option
def keystore_check(keystore_dir: Path) -> None:
    """Check that the passphrase opens the keystore."""
    click.echo(unlock(keystore_dir).keystore_id)
