"""depgate.tls: the webhook's self-signed certificate, made and judged in a child process
(`python -m depgate.tls`), so that the operator never maps cryptography's x509 bindings."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest

from depgate import tls

NAMES = tls.hostnames("depgate-webhook", "depgate-system")


def test_a_certificate_made_apart_serves_tls_for_its_names(tmp_path):
    cert, key = tls.make_certificate_apart(NAMES)
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" in key
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")  # the pair matches
    client = ssl.create_default_context(cadata=cert.decode())  # and it is its own CA, as caBundle trusts it
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", "depgate-webhook"),),)
    assert tls.usable_apart(cert, NAMES)
    assert tls.usable_apart(cert, ["depgate-webhook.depgate-system.svc", "::1"])  # any subset of its names


@pytest.mark.parametrize("why", ["another name", "expiring", "garbage", "empty"])
def test_what_does_not_serve_is_made_again(why):
    if why == "another name":
        cert, _ = tls.make_certificate(NAMES)
        names = [*NAMES, "depgate-webhook.other.svc"]
    elif why == "expiring":  # fewer than RENEW_DAYS left
        cert, _ = tls.make_certificate(NAMES, now=datetime.now(UTC) - timedelta(days=tls.VALID_DAYS - 10))
        names = NAMES
    else:
        cert, names = (b"-----BEGIN CERTIFICATE-----\nnope\n" if why == "garbage" else b""), NAMES
    assert not tls.usable_apart(cert, names)
    assert not tls.usable(cert, names)  # the same judgement in-process


def test_the_child_refuses_a_bad_command():
    with pytest.raises(RuntimeError, match=r"exited 2: usage: python -m depgate\.tls"):
        tls._child(["bogus"])
