"""``twofold attest verify | collateral | measure``: hardware evidence, checked on the owner's side (no TEE needed)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import click

from twofold.errors import AttestationError, ConfigError

BACKENDS = ("sev-snp", "tdx", "sgx")
_KDS = "https://kdsintf.amd.com/vcek/v1"


def _evidence_bytes(path: Path) -> bytes:
    """The raw evidence: a binary file, or hex text (as some tools save an SNP report)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii").strip()
        return bytes.fromhex("".join(text.split())) if text else raw
    except (UnicodeDecodeError, ValueError):
        return raw


def _moment(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {at!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group()
def attest() -> None:
    """Hardware attestation evidence (AMD SEV-SNP, Intel TDX and SGX)."""


@attest.command("verify")
@click.argument("evidence", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--backend", required=True, type=click.Choice(BACKENDS))
@click.option("--collateral", required=True, type=click.Path(exists=True, path_type=Path),
              help="SEV-SNP: a directory of ARK, ASK and VCEK/VLEK (and CRL); TDX/SGX: a QuoteCollateralV3 JSON file.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Check the policy's platform rule for this backend too (launch measurements, TCB, ...).")
@click.option("--at", default=None, help="Verify at this ISO 8601 time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the claims as JSON.")
def verify(evidence: Path, backend: str, collateral: Path, policy_path: Path | None, at: str | None,
           as_json: bool) -> None:
    """Verify EVIDENCE (an SEV-SNP report, or a TDX/SGX quote); print its claims, or the reason it is refused."""
    from twofold.kbs.hardware import verify_platform
    from twofold.kbs.policy import PlatformRule, load_policy

    if policy_path is not None:
        rule = load_policy(policy_path).platform(backend)
        rule = dataclasses.replace(rule, collateral=str(collateral))
    else:  # the evidence's own validity only: any launch measurement, default TCB statuses, no debug
        rule = PlatformRule(str(collateral), (), vmpl=None)
    claims = verify_platform(backend, _evidence_bytes(evidence), rule, at=_moment(at))
    described = claims.describe()
    if as_json:
        click.echo(json.dumps(described, indent=2, sort_keys=True))
        return
    click.echo(f"verified {backend} evidence")
    for name, value in described.items():
        click.echo(f"  {name:<16} {value}")


@attest.command("collateral")
@click.argument("report", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--family", type=click.Choice(["Milan", "Genoa", "Turin"]), required=True,
              help="The AMD EPYC family the report comes from.")
def collateral(report: Path, family: str) -> None:
    """Print where to fetch an SEV-SNP report's collateral (AMD's key distribution service), for a machine with
    internet access; put the files in one directory and pass it as --collateral (and the policy's 'collateral')."""
    from twofold.kbs.snp import parse_report

    parsed = parse_report(_evidence_bytes(report))
    tcb = parsed.reported_tcb
    chip = parsed.chip_id[:8].hex() if family == "Turin" else parsed.chip_id.hex()
    if not any(parsed.chip_id):
        raise AttestationError("the report masks its chip_id: fetch the VLEK from your cloud provider instead")
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    click.echo(f"curl -o vcek.der '{_KDS}/{family}/{chip}?{query}'")
    click.echo(f"curl -o cert_chain.pem '{_KDS}/{family}/cert_chain'      # ASK and ARK")
    click.echo(f"curl -o crl.der '{_KDS}/{family}/crl'")
    click.echo("TDX/SGX: fetch a QuoteCollateralV3 JSON from your PCCS or Intel's PCS (e.g. with dcap-qvl's "
               "`fetch` command) and pass the file as --collateral.")


@attest.command("measure")
@click.option("--ovmf", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The VM's firmware (an OVMF build with SEV-SNP metadata, e.g. OvmfPkg/AmdSev).")
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--vcpu-type", default="EPYC-v4", show_default=True,
              help="QEMU's -cpu model (its CPUID signature is measured); 'none' for the VMM's own (ec2, gce).")
@click.option("--kernel", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Measured direct boot: the kernel QEMU loads with -kernel.")
@click.option("--initrd", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--append", default="", help="The kernel command line (-append), e.g. with the dm-verity root hash.")
@click.option("--guest-features", type=str, default="0x1", show_default=True, help="SEV_FEATURES of the guest.")
@click.option("--vmm", type=click.Choice(["QEMU", "ec2", "gce"]), default="QEMU", show_default=True)
@click.option("--ovmf-hash", default=None, help="A precomputed firmware hash (96 hex digits), as some clouds publish.")
def measure(ovmf: Path, vcpus: int, vcpu_type: str, kernel: Path | None, initrd: Path | None, append: str,
            guest_features: str, vmm: str, ovmf_hash: str | None) -> None:
    """Print the SEV-SNP launch measurement a VM started from these files gives (computed by sev-snp-measure);
    list it with `twofold policy init --backend sev-snp --platform-measurement HEX`."""
    from twofold.kbs.snp_measure import GuestLaunch, launch_measurement

    try:
        features = int(guest_features, 0)
    except ValueError:
        raise ConfigError(f"--guest-features {guest_features!r} is not an integer") from None
    launch = GuestLaunch(ovmf=ovmf, vcpus=vcpus, vcpu_type=None if vcpu_type == "none" else vcpu_type,
                         kernel=kernel, initrd=initrd, append=append, guest_features=features, vmm=vmm,
                         ovmf_hash=ovmf_hash)
    click.echo(launch_measurement(launch))


@click.group()
def gramine() -> None:
    """Running the enclave under Gramine on Intel SGX."""


@gramine.command("manifest")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--socket", "socket_path", required=True, help="The enclave's Unix socket.")
@click.option("--kbs", "kbs_url", required=True, help="URL of the owner's key broker.")
@click.option("--broker-identity", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A dataset directory the enclave reads (ciphertext; repeatable).")
@click.option("--enclave-size", default="8G", show_default=True)
@click.option("--max-threads", type=click.IntRange(min=8), default=64, show_default=True)
def gramine_manifest(out: Path, socket_path: str, kbs_url: str, broker_identity: Path, data_dirs: tuple[Path, ...],
                     enclave_size: str, max_threads: int) -> None:
    """Write a Gramine manifest template for the enclave (trusted files: Python, its libraries, the TCB)."""
    from twofold.cli.common import info
    from twofold.gramine import manifest

    out.write_text(manifest(socket_path, kbs_url, str(broker_identity.resolve()), [str(d) for d in data_dirs],
                            enclave_size=enclave_size, max_threads=max_threads))
    info(f"wrote {out}: gramine-manifest {out} > twofold.manifest && gramine-sgx-sign --manifest twofold.manifest")
