"""The admission webhook's certificate: self-signed, made here with `cryptography` (no cert-manager
needed), kept in the Secret depgate.constants.WEBHOOK_SECRET so that every replica serves the same
one and the API server trusts it through the webhook configurations' caBundle.

Plain functions over bytes: no I/O.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
RENEW_DAYS = 30  # a certificate with less left than this is made again at start


def hostnames(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the webhook: the Service's DNS names, and loopback (a
    local plane's API server calls an operator running beside it)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local", "localhost", "127.0.0.1", "::1"]


def make_certificate(names: Sequence[str], now: datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed serving certificate (its own CA) for `names`: (certificate PEM, private key PEM)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def usable(cert_pem: bytes, names: Sequence[str], now: datetime | None = None) -> bool:
    """Whether a stored certificate still serves: it parses, covers every name, and has more than
    RENEW_DAYS left."""
    now = now or datetime.now(UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | \
           {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    want = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    return want <= have and cert.not_valid_after_utc - now > timedelta(days=RENEW_DAYS)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def signing_key() -> bytes:
    """The key of the authorship signatures (depgate.authority.signature)."""
    return secrets.token_bytes(32)
