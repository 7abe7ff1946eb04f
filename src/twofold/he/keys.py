"""System key material for the two servers, and party enrolment.

Directory layout of a system (every secret file mode 0600, no pickle)::

    SYSTEM/system.json            key size, test-key flag, names (public)
    SYSTEM/public/params.bin      DT-PKC parameters N, g
    SYSTEM/public/system.pk       the system public key (its weak secret is discarded at init)
    SYSTEM/public/ca.pem          the system CA certificate
    SYSTEM/public/registry/*.json enrolled parties: name, role, DT-PKC public key (hex)
    SYSTEM/ca/ca.key              CA signing key (keep offline in production)
    SYSTEM/mu/share.bin           MU's share lambda1 of the strong key, plus tls.pem / tls.key
    SYSTEM/su/share.bin           SU's share lambda2, plus tls.pem / tls.key
    SYSTEM/parties/NAME/          an enrolled owner, client or admin: user.pk, user.sk, tls.pem, tls.key

MU never reads ``su/`` and SU never reads ``mu/``; in a real deployment each directory lives on its own host.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twofold.crypto import dtpkc
from twofold.crypto import dtpkc_wire as wire
from twofold.errors import ConfigError, KeyAccessError
from twofold.fsutil import make_private_dir, write_private

ROLES = ("mu", "su", "owner", "client", "admin")
SERVER_NAMES = {"mu": "twofold-mu", "su": "twofold-su"}
MIN_SECURE_BITS = 2048
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VALIDITY = datetime.timedelta(days=825)


def check_name(name: str) -> str:
    """A party name usable as a file name and certificate CN."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


# ------------------------------------------------------------------------------------------ certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
          signing_key: ec.EllipticCurvePrivateKey, *, ca: bool, sans: list[x509.GeneralName]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                                        critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twofold"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, name)])


def issue_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
                      role: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a party; servers get their DNS name and loopback addresses as SANs."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}")
    key = _new_key()
    sans: list[x509.GeneralName] = []
    if role in SERVER_NAMES:
        sans = [x509.DNSName(SERVER_NAMES[role]), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _cert(_subject(name, role), ca_cert.subject, key.public_key(), ca_key, ca=False, sans=sans)
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def peer_identity(cert_der: bytes | None) -> tuple[str, str]:
    """(role, name) from a peer certificate already verified by TLS against the system CA."""
    if not cert_der:
        raise KeyAccessError("peer presented no certificate")
    cert = x509.load_der_x509_certificate(cert_der)
    role = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not role or not name or role[0].value not in ROLES:
        raise KeyAccessError("peer certificate carries no twofold role")
    return str(role[0].value), str(name[0].value)


# ------------------------------------------------------------------------------------------ the system


@dataclass(frozen=True)
class SystemInfo:
    """Public facts of a system: where it lives, its key size and whether test keys were allowed."""

    root: Path
    key_bits: int
    insecure_test_keys: bool

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def ca_pem(self) -> Path:
        return self.public / "ca.pem"

    def party_dir(self, name: str) -> Path:
        return self.root / "parties" / check_name(name)

    def tls_files(self, who: str) -> tuple[Path, Path]:
        """(cert, key) of 'mu', 'su' or an enrolled party."""
        base = self.root / who if who in SERVER_NAMES else self.party_dir(who)
        return base / "tls.pem", base / "tls.key"

    def params(self) -> dtpkc.PublicParams:
        data = _read(self.public / "params.bin")
        return wire.params_from_bytes(data, min_bits=min(self.key_bits, MIN_SECURE_BITS))

    def system_key(self, params: dtpkc.PublicParams) -> dtpkc.PublicKey:
        return wire.public_key_from_bytes(params, _read(self.public / "system.pk"))

    def share(self, role: str, params: dtpkc.PublicParams) -> dtpkc.StrongKeyShare:
        """The strong-key share of 'mu' (role 1) or 'su' (role 2); only that server calls this."""
        share = wire.share_from_bytes(params, _read(self.root / role / "share.bin"))
        if share.role != {"mu": 1, "su": 2}[role]:
            raise KeyAccessError(f"{role}/share.bin holds the wrong share")
        return share

    def registry(self) -> dict[str, dict[str, str]]:
        """Enrolled parties: name -> {"role", "pk"}."""
        out = {}
        reg = self.public / "registry"
        if reg.is_dir():
            for path in sorted(reg.glob("*.json")):
                doc = json.loads(path.read_text())
                out[doc["name"]] = {"role": doc["role"], "pk": doc["pk"]}
        return out

    def party_key(self, name: str, params: dtpkc.PublicParams) -> dtpkc.UserKeyPair:
        """An enrolled party's own DT-PKC key pair (read only by that party)."""
        base = self.party_dir(name)
        pk = wire.public_key_from_bytes(params, _read(base / "user.pk"))
        sk = wire.weak_key_from_bytes(params, _read(base / "user.sk"))
        if sk.public_key != pk:
            raise KeyAccessError(f"key pair of {name} is inconsistent")
        return dtpkc.UserKeyPair(pk, sk)

    def warning(self) -> str | None:
        if self.insecure_test_keys:
            return f"WARNING: this system uses insecure {self.key_bits}-bit test keys"
        return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"missing key file {path}") from None


def load_system(root: Path | str) -> SystemInfo:
    """Open a system directory created by :func:`init_system`."""
    root = Path(root)
    try:
        doc = json.loads((root / "system.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{root} is not a twofold HE system (no system.json); run `twofold he init`") from None
    return SystemInfo(root, int(doc["key_bits"]), bool(doc.get("insecure_test_keys", False)))


def init_system(root: Path | str, key_bits: int = 2048, *, allow_insecure: bool = False,
                admin: str = "admin") -> SystemInfo:
    """Create DT-PKC parameters, split the strong key between MU and SU, and create the CA and certificates.

    The strong key itself is never written; the system key's weak secret is discarded, so only MU and SU
    together can decrypt anything.
    """
    root = Path(root)
    if (root / "system.json").exists():
        raise ConfigError(f"{root} already holds a system")
    if key_bits < MIN_SECURE_BITS and not allow_insecure:
        raise ConfigError(f"key size {key_bits} < {MIN_SECURE_BITS}: pass --insecure-small-keys for tests")
    params, strong = dtpkc.generate_params(key_bits)
    share1, share2 = dtpkc.split_strong_key(strong)
    del strong
    system_pk = dtpkc.generate_user_key(params).public
    make_private_dir(root)
    for sub in ("public", "public/registry", "ca", "mu", "su", "parties"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("ca", "mu", "su", "parties"):
        make_private_dir(root / sub)
    (root / "public" / "params.bin").write_bytes(wire.params_to_bytes(params))
    (root / "public" / "system.pk").write_bytes(wire.public_key_to_bytes(system_pk))
    write_private(root / "mu" / "share.bin", wire.share_to_bytes(share1))
    write_private(root / "su" / "share.bin", wire.share_to_bytes(share2))
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twofold"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "twofold HE system CA")])
    ca_cert = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True, sans=[])
    (root / "public" / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(root / "ca" / "ca.key", _key_pem(ca_key))
    for role in SERVER_NAMES:
        cert_pem, key_pem = issue_certificate(ca_cert, ca_key, role, role)
        (root / role / "tls.pem").write_bytes(cert_pem)
        write_private(root / role / "tls.key", key_pem)
    doc = {"format": 1, "key_bits": key_bits, "insecure_test_keys": key_bits < MIN_SECURE_BITS}
    (root / "system.json").write_text(json.dumps(doc, indent=2) + "\n")
    info = load_system(root)
    enroll(info, admin, "admin")
    return info


def _load_ca(info: SystemInfo) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(_read(info.ca_pem))
    key = serialization.load_pem_private_key(_read(info.root / "ca" / "ca.key"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyAccessError("CA key has the wrong type")
    return cert, key


def enroll(info: SystemInfo, name: str, role: str) -> Path:
    """Create a party (owner, client or admin): its own DT-PKC key pair and a TLS certificate from the CA.

    The public key goes to the registry both servers read; the weak secret stays in the party directory.
    """
    check_name(name)
    if role not in ("owner", "client", "admin"):
        raise ConfigError("role must be owner, client or admin")
    entry = info.public / "registry" / f"{name}.json"
    if entry.exists():
        raise ConfigError(f"party {name!r} is already enrolled")
    params = info.params()
    pair = dtpkc.generate_user_key(params)
    base = make_private_dir(info.party_dir(name))
    (base / "user.pk").write_bytes(wire.public_key_to_bytes(pair.public))
    write_private(base / "user.sk", wire.weak_key_to_bytes(pair.secret))
    ca_cert, ca_key = _load_ca(info)
    cert_pem, key_pem = issue_certificate(ca_cert, ca_key, name, role)
    (base / "tls.pem").write_bytes(cert_pem)
    write_private(base / "tls.key", key_pem)
    entry.write_text(json.dumps({"name": name, "role": role,
                                 "pk": wire.public_key_to_bytes(pair.public).hex()}) + "\n")
    return base
