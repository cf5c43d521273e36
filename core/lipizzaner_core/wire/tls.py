"""Mutual TLS for the exchange: a run's certificates, and gRPC credentials made from them.

A run's cells share one certificate signed by a CA of the run's own. Its first DNS name is
the run's identity: a cell trusts only peers whose certificate chains to the run's CA and
names the same identity, so a second run (another CA, or a shared issuer with another
name) is refused. The files are those of a Kubernetes TLS Secret and of cert-manager's
(`ca.crt`, `tls.crt`, `tls.key`), so either can be mounted as is.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
VALIDITY = datetime.timedelta(days=365)
SAN_KEY = "x509_subject_alternative_name"  # gRPC's auth-context property of a peer's SANs


class TlsError(ValueError):
    """Certificates that are missing or unusable: a configuration error."""


def run_identity(name: str, namespace: str | None) -> str:
    """The DNS name a run's certificate carries (cert-manager: put it in `dnsNames`)."""
    return f"{name}.{namespace or 'local'}.lipizzaner"


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes: the run's CA certificate, the cells' certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes

    @property
    def identity(self) -> str:
        """The first DNS name of the certificate: the run's identity."""
        certificate = x509.load_pem_x509_certificate(self.cert)
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            raise TlsError(f"{CERT_FILE}: the certificate has no DNS name") from None
        dns = names.value.get_values_for_type(x509.DNSName)
        if not dns:
            raise TlsError(f"{CERT_FILE}: the certificate has no DNS name")
        return dns[0]

    @classmethod
    def from_files(cls, files: dict[str, bytes], where: str) -> TlsMaterial:
        """The three files (a Secret's data, or a directory's), checked now, not at a peer."""
        missing = [name for name in (CA_FILE, CERT_FILE, KEY_FILE) if not files.get(name)]
        if missing:
            raise TlsError(f"{where}: missing {', '.join(missing)}")
        material = cls(files[CA_FILE], files[CERT_FILE], files[KEY_FILE])
        try:
            material.identity  # noqa: B018 - parses the certificate
        except ValueError as exc:
            raise TlsError(f"{where}: {exc}") from None
        return material

    @classmethod
    def read(cls, directory: str | Path) -> TlsMaterial:
        folder = Path(directory)
        if not folder.is_dir():
            raise TlsError(f"TLS directory {folder}: not a directory")
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return cls.from_files(files, f"TLS directory {folder}")

    def write(self, directory: str | Path) -> Path:
        """Write the three files, readable by their owner only."""
        folder = Path(directory)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, data in zip((CA_FILE, CERT_FILE, KEY_FILE), self.files().values(), strict=True):
            path = folder / name
            path.touch(mode=0o600)
            path.write_bytes(data)
        return folder

    def files(self) -> dict[str, bytes]:
        """The Secret's keys and values."""
        return {CA_FILE: self.ca, CERT_FILE: self.cert, KEY_FILE: self.key}

    def server_credentials(self) -> grpc.ServerCredentials:
        """A server that asks every client for a certificate from the run's CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Peers are reached by pod DNS name or IP; what is checked is the run's identity."""
        return [("grpc.ssl_target_name_override", self.identity)]


@dataclass(frozen=True)
class CertificateAuthority:
    """A small CA: a run's own (the operator's and `lipizzaner run`'s), or a shared issuer."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, name: str, now: datetime.datetime | None = None) -> CertificateAuthority:
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _builder(subject, subject, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    def issue(self, identity: str, now: datetime.datetime | None = None) -> TlsMaterial:
        """A certificate for `identity`, valid for servers and clients alike."""
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        # The identity is in the DNS name; a common name is at most 64 characters.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lipizzaner cell")])
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        certificate = (
            _builder(subject, self.certificate.subject, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return TlsMaterial(
            ca=self.certificate.public_bytes(serialization.Encoding.PEM),
            cert=certificate.public_bytes(serialization.Encoding.PEM),
            key=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def generate(identity: str) -> TlsMaterial:
    """A run's own certificates: a fresh CA that signs one certificate, then is forgotten."""
    return CertificateAuthority.new("lipizzaner run CA").issue(identity)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks differ a little
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def peer_identities(context: grpc.ServicerContext) -> list[str]:
    """The DNS names in the calling peer's certificate (none over plaintext)."""
    return [name.decode() for name in context.auth_context().get(SAN_KEY, [])]
