"""The admission webhook's certificate: self-signed, made here with `cryptography` (no cert-manager
needed), kept in the Secret depgate.constants.WEBHOOK_SECRET so that every replica serves the same
one and the API server trusts it through the webhook configurations' caBundle.

Plain functions over bytes, no I/O; and `python -m depgate.tls make|usable`, how the operator calls
the two that need `cryptography`, in a child process: its x509 bindings (their own OpenSSL) would
stay mapped in the operator for good, 8.6 MiB of RSS, for what it does once at start.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

VALID_DAYS = 365
RENEW_DAYS = 30  # a certificate with less left than this is made again at start


def hostnames(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the webhook: the Service's DNS names, and loopback (a
    local plane's API server calls an operator running beside it)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local", "localhost", "127.0.0.1", "::1"]


def make_certificate(names: Sequence[str], now: datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed serving certificate (its own CA) for `names`: (certificate PEM, private key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    from cryptography import x509

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


# ---------------------------------------------------------------------- in a child process

CHILD_TIMEOUT_SECONDS = 60.0


def _child(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    try:
        out = subprocess.run([sys.executable, "-m", "depgate.tls", *args], input=stdin, capture_output=True,
                             timeout=CHILD_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"making the webhook certificate (python -m depgate.tls {args[0]}): {e}") from e
    if out.returncode not in (0, 1):
        raise RuntimeError(f"python -m depgate.tls {args[0]} exited {out.returncode}: "
                           f"{out.stderr.decode(errors='replace').strip()[-500:]}")
    return out


def make_certificate_apart(names: Sequence[str]) -> tuple[bytes, bytes]:
    """make_certificate(names), computed in a child process."""
    doc = json.loads(_child(["make", *names]).stdout)
    return base64.b64decode(doc["crt"]), base64.b64decode(doc["key"])


def usable_apart(cert_pem: bytes, names: Sequence[str]) -> bool:
    """usable(cert_pem, names), judged in a child process (the certificate on its stdin)."""
    return _child(["usable", *names], cert_pem).returncode == 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "make":
        cert, key = make_certificate(argv[1:])
        print(json.dumps({"crt": base64.b64encode(cert).decode(), "key": base64.b64encode(key).decode()}))
        return 0
    if len(argv) >= 2 and argv[0] == "usable":
        return 0 if usable(sys.stdin.buffer.read(), argv[1:]) else 1
    print("usage: python -m depgate.tls make NAME... | usable NAME... < cert.pem", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
