"""The expected SNP launch measurement (`twofold attest measure`), on a synthetic firmware built here.

The firmware is a 4 KiB stand-in for the tail of an OVMF build: the GUIDed footer table and SEV metadata that
sev-snp-measure reads (its layout from edk2's OvmfPkg/ResetVector), with made-up addresses. It is not a real
firmware; it exercises how twofold hands a launch to sev-snp-measure, checked against that package's own CLI.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.conftest import run_cli

from twofold.errors import ConfigError

pytest.importorskip("sevsnpmeasure")

from twofold.kbs.snp_measure import GuestLaunch, launch_measurement

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
HASH_TABLE_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEC_MEM, SECRETS, CPUID, KERNEL_HASHES = 1, 2, 3, 0x10


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def synthetic_ovmf(path: Path, *, kernel_hashes: bool = True, reset_eip: int = 0xFFFFF000) -> Path:
    """A 4 KiB firmware tail: metadata sections at 0x800000.., the reset vector and (optionally) the hash table."""
    size = 4096
    sections = [(0x800000, 0x9000, SEC_MEM), (0x809000, 0x1000, SECRETS), (0x80A000, 0x1000, CPUID)]
    if kernel_hashes:
        sections.append((0x80B000, 0x1000, KERNEL_HASHES))
    metadata = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    metadata += b"".join(struct.pack("<III", *section) for section in sections)
    metadata_at = 0x100  # offset of the metadata header from the start of the 4 KiB
    entries = _entry(RESET_BLOCK_GUID, struct.pack("<II", reset_eip, 0))
    entries += _entry(METADATA_GUID, struct.pack("<I", size - metadata_at))
    if kernel_hashes:
        entries += _entry(HASH_TABLE_GUID, struct.pack("<II", 0x80B000 + 0x400, 0x400))
    table = entries + struct.pack("<H", len(entries) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    image = bytearray(size)
    image[metadata_at:metadata_at + len(metadata)] = metadata
    image[size - 32 - len(table):size - 32] = table
    path.write_bytes(bytes(image))
    return path


@pytest.fixture
def boot(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "vmlinuz").write_bytes(b"a kernel image" * 100)
    (tmp_path / "initrd.img").write_bytes(b"an initrd" * 100)
    return {"ovmf": synthetic_ovmf(tmp_path / "OVMF.fd"), "kernel": tmp_path / "vmlinuz",
            "initrd": tmp_path / "initrd.img", "plain": synthetic_ovmf(tmp_path / "plain.fd", kernel_hashes=False)}


def _package_cli(*args: str) -> str:
    """sev-snp-measure's own command line, as its users run it."""
    done = subprocess.run([sys.executable, "-m", "sevsnpmeasure.cli", "--mode", "snp", *args],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1].split()[-1].lower()


def test_measurement_matches_the_package_cli(boot: dict[str, Path]) -> None:
    launch = GuestLaunch(ovmf=boot["ovmf"], vcpus=2, vcpu_type="EPYC-Milan", kernel=boot["kernel"],
                         initrd=boot["initrd"], append="console=ttyS0 root=/dev/vda verity=abc")
    ours = launch_measurement(launch)
    assert len(ours) == 96
    assert ours == _package_cli("--ovmf", str(boot["ovmf"]), "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
                                "--kernel", str(boot["kernel"]), "--initrd", str(boot["initrd"]),
                                "--append", "console=ttyS0 root=/dev/vda verity=abc")


@pytest.mark.parametrize("change", [
    {"append": "console=ttyS0 root=/dev/vda verity=abd"},  # another dm-verity root hash
    {"vcpus": 3},
    {"vcpu_type": "EPYC-v4"},
    {"guest_features": 0x21},
    {"initrd": None},
])
def test_every_launch_input_is_measured(boot: dict[str, Path], change: dict) -> None:
    base = GuestLaunch(ovmf=boot["ovmf"], vcpus=2, vcpu_type="EPYC-Milan", kernel=boot["kernel"],
                       initrd=boot["initrd"], append="console=ttyS0 root=/dev/vda verity=abc")
    fields = {**base.__dict__, **change}
    assert launch_measurement(GuestLaunch(**fields)) != launch_measurement(base)


def test_another_kernel_changes_the_measurement(boot: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-vmlinuz"
    other.write_bytes(boot["kernel"].read_bytes() + b"\x00")
    first = launch_measurement(GuestLaunch(ovmf=boot["ovmf"], kernel=boot["kernel"]))
    assert launch_measurement(GuestLaunch(ovmf=boot["ovmf"], kernel=other)) != first


@pytest.mark.parametrize(("launch", "reason"), [
    ({"vcpus": 0}, "at least one vCPU"),
    ({"vcpu_type": "Pentium"}, "unknown vCPU type"),
    ({"vcpu_type": None}, "vCPU type"),
    ({"append": "quiet"}, "only with a kernel"),
    ({"ovmf_hash": "zz"}, "96 hex digits"),
    ({"vmm": "xen"}, "unknown VMM type"),
])
def test_bad_launches_are_refused_clearly(boot: dict[str, Path], launch: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        launch_measurement(GuestLaunch(ovmf=boot["ovmf"], **launch))


def test_a_kernel_on_firmware_without_kernel_hashes_is_refused(boot: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="cannot measure"):
        launch_measurement(GuestLaunch(ovmf=boot["plain"], kernel=boot["kernel"]))


def test_firmware_without_sev_metadata_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank.fd"
    blank.write_bytes(bytes(4096))
    with pytest.raises(ConfigError, match="cannot measure"):
        launch_measurement(GuestLaunch(ovmf=blank))


def test_cli_prints_the_measurement_for_the_policy(boot: dict[str, Path], tmp_path: Path) -> None:
    done = run_cli("attest", "measure", "--ovmf", str(boot["ovmf"]), "--kernel", str(boot["kernel"]),
                   "--append", "root=/dev/vda", "--vcpus", "4")
    assert done.returncode == 0, done.stderr
    expected = launch_measurement(GuestLaunch(ovmf=boot["ovmf"], kernel=boot["kernel"], append="root=/dev/vda",
                                              vcpus=4))
    assert done.stdout.strip() == expected
    refused = run_cli("attest", "measure", "--ovmf", str(boot["plain"]), "--kernel", str(boot["kernel"]))
    assert refused.returncode != 0 and "cannot measure" in refused.stderr


# sev-snp-measure 0.0.13's own known answers (tests/test_guest.py): direct boot with an empty kernel and initrd
# on its fixture firmware (the last 4 KiB of an OvmfPkg/AmdSev build, tests/fixtures/ovmf_AmdSev_suffix.bin in
# its repository). The fixture is a binary this project does not ship: point TWOFOLD_SNP_MEASURE_FIXTURES at a
# checkout's tests/fixtures to run them.
PACKAGE_KNOWN_ANSWERS = [
    ({"append": "console=ttyS0 loglevel=7", "guest_features": 0x21},
     "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    ({"append": "", "guest_features": 0x21, "vmm": "ec2"},
     "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"),
    ({"append": "", "guest_features": 0x1, "vmm": "ec2"},
     "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056"),
]


@pytest.mark.parametrize(("launch", "expected"), PACKAGE_KNOWN_ANSWERS)
def test_the_packages_known_answers(tmp_path: Path, launch: dict, expected: str) -> None:
    import os

    fixtures = os.environ.get("TWOFOLD_SNP_MEASURE_FIXTURES")
    if not fixtures or not (Path(fixtures) / "ovmf_AmdSev_suffix.bin").is_file():
        pytest.skip("sev-snp-measure's fixture firmware is absent (set TWOFOLD_SNP_MEASURE_FIXTURES)")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    measured = launch_measurement(GuestLaunch(ovmf=Path(fixtures) / "ovmf_AmdSev_suffix.bin", vcpus=1,
                                              vcpu_type="EPYC-v4", kernel=empty, initrd=empty, **launch))
    assert measured == expected
