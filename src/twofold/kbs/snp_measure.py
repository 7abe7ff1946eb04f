"""The expected SEV-SNP launch measurement of a confidential VM, computed with ``sev-snp-measure``.

A report's MEASUREMENT is the SHA-384 chain over every page the hypervisor put into the guest at launch: the
firmware (OVMF), the metadata pages it declares (with, for a measured direct boot, the hashes of kernel, initrd
and command line), and each vCPU's initial state. The owner computes it from the very files she means to run and
lists it in the policy's platform rule (``twofold policy init --backend sev-snp --platform-measurement HEX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twofold.errors import ConfigError

VMM_TYPES = ("QEMU", "ec2", "gce")


@dataclass(frozen=True)
class GuestLaunch:
    """What a VM is launched with; every field is part of the measurement."""

    ovmf: Path
    vcpus: int = 1
    vcpu_type: str | None = "EPYC-v4"  # QEMU's -cpu model; None: the VMM's own (ec2, gce)
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    guest_features: int = 0x1  # SEV_FEATURES: SNP active
    vmm: str = "QEMU"
    ovmf_hash: str | None = None  # a precomputed firmware hash (sev-snp-measure --mode snp:ovmf-hash)


def _library():
    try:
        from sevsnpmeasure import guest, vcpu_types, vmm_types
        from sevsnpmeasure.sev_mode import SevMode
    except ImportError:
        raise ConfigError("computing an SNP launch measurement needs sev-snp-measure: "
                          "pip install 'twofold[tee]'") from None
    return guest, vcpu_types, vmm_types, SevMode


def _check(launch: GuestLaunch, cpu_types: dict[str, int]) -> None:
    if launch.vcpus < 1:
        raise ConfigError("a VM needs at least one vCPU")
    if launch.vmm not in VMM_TYPES:
        raise ConfigError(f"unknown VMM type {launch.vmm!r} (known: {', '.join(VMM_TYPES)})")
    if launch.vcpu_type is None and launch.vmm == "QEMU":
        raise ConfigError("a QEMU guest's measurement depends on its vCPU type: give one (e.g. EPYC-v4)")
    if launch.vcpu_type is not None and launch.vcpu_type not in cpu_types:
        raise ConfigError(f"unknown vCPU type {launch.vcpu_type!r} (known: {', '.join(sorted(cpu_types))})")
    if launch.kernel is None and (launch.initrd is not None or launch.append):
        raise ConfigError("an initrd or a kernel command line is measured only with a kernel")
    if launch.ovmf_hash is not None:
        try:
            if len(bytes.fromhex(launch.ovmf_hash)) != 48:
                raise ValueError
        except ValueError:
            raise ConfigError("the firmware hash must be 96 hex digits (SHA-384)") from None
    for path in (launch.ovmf, launch.kernel, launch.initrd):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} is not a file")


def launch_measurement(launch: GuestLaunch) -> str:
    """The 96-hex-digit SNP launch measurement of ``launch``; :class:`ConfigError` on bad input."""
    guest, vcpu_types, vmm_types, sev_mode = _library()
    _check(launch, vcpu_types.CPU_SIGS)
    signature = vcpu_types.CPU_SIGS[launch.vcpu_type] if launch.vcpu_type is not None else 0
    try:
        digest = guest.calc_launch_digest(
            sev_mode.SEV_SNP, launch.vcpus, signature, str(launch.ovmf),
            str(launch.kernel) if launch.kernel else None, str(launch.initrd) if launch.initrd else None,
            launch.append, launch.guest_features, snp_ovmf_hash_str=launch.ovmf_hash or "",
            vmm_type=vmm_types.VMMType[launch.vmm])
    except (RuntimeError, ValueError, OSError) as exc:  # the firmware lacks what the launch needs, or is malformed
        raise ConfigError(f"cannot measure this launch: {exc}") from None
    return digest.hex()
