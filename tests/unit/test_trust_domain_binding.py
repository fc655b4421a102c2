"""spiffe/spiffe#375: an X509-SVID is judged only by the bundle of the trust domain of its
own SPIFFE ID; a CA of b.example can never vouch for an ID in a.example."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pki.errors import InvalidSvid
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import verify_x509_svid, verify_x509_svid_in_bundles
from tests.unit.pki_helpers import TestCA

A, B = TrustDomain.parse("a.example"), TrustDomain.parse("b.example")


def forged_by(ca: TestCA, spiffe_id: str) -> x509.Certificate:
    """A leaf signed by *ca*'s root (no name constraints) claiming *spiffe_id*."""
    key = generate_private_key(KeyType.EC_P256)
    now = ca.clock.now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .sign(ca.root_key, hashes.SHA256())
    )


def test_a_federated_ca_cannot_vouch_for_an_id_of_another_domain() -> None:
    a = TestCA("a.example", with_intermediate=False)
    b = TestCA("b.example", with_intermediate=False, clock=a.clock)
    held = {A: [a.root], B: [b.root]}
    forged = forged_by(b, "spiffe://a.example/payments")
    # Judged by a.example's bundle (its own ID's), B's signature does not chain.
    with pytest.raises(InvalidSvid):
        verify_x509_svid_in_bundles(forged, [], held, a.clock)
    # Pooling every root held would have accepted it: the binding is what refuses it.
    assert verify_x509_svid(forged, [], [a.root, b.root], A, a.clock) == SpiffeId.parse(
        "spiffe://a.example/payments"
    )
    # B's genuine SVIDs pass against B's bundle, and A's against A's.
    genuine = forged_by(b, "spiffe://b.example/client")
    assert verify_x509_svid_in_bundles(genuine, [], held, a.clock) == SpiffeId.parse(
        "spiffe://b.example/client"
    )
    own = a.issue("/web")
    assert verify_x509_svid_in_bundles(own, [], held, a.clock).trust_domain == A


def test_an_svid_of_a_domain_without_a_bundle_is_refused() -> None:
    c = TestCA("c.example", with_intermediate=False)
    with pytest.raises(InvalidSvid, match=r"no bundle of trust domain c\.example"):
        verify_x509_svid_in_bundles(c.issue("/x"), [], {A: [c.root]}, c.clock)
