"""pki's validators on X.509-SVIDs built by the openssl CLI (see tests/vectors/README.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from pki.ca import load_pem_certificates
from pki.clock import FakeClock
from pki.errors import InvalidSvid
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import validate_x509_svid, verify_x509_svid

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "openssl-svid"
TD = TrustDomain("vectors.example")
CLOCK = FakeClock(datetime(2050, 1, 1, tzinfo=UTC))


def _load(name: str) -> x509.Certificate:
    (cert,) = load_pem_certificates((VECTORS / name).read_bytes())
    return cert


def test_openssl_svid_is_accepted() -> None:
    sid = verify_x509_svid(
        _load("leaf.pem"), [_load("intermediate.pem")], [_load("root.pem")], TD, CLOCK
    )
    assert sid == SpiffeId.parse("spiffe://vectors.example/openssl/workload")


def test_openssl_svid_with_two_uris_is_rejected() -> None:
    with pytest.raises(InvalidSvid, match="exactly one URI SAN, found 2"):
        validate_x509_svid(_load("two_uris.pem"), TD)


def test_openssl_svid_escaping_name_constraints_is_rejected() -> None:
    escape = _load("escape.pem")
    elsewhere = TrustDomain("elsewhere.example")
    assert validate_x509_svid(escape, elsewhere)  # well-formed on its own
    with pytest.raises(InvalidSvid, match="outside the permitted subtrees"):
        verify_x509_svid(escape, [_load("intermediate.pem")], [_load("root.pem")], elsewhere, CLOCK)


def test_openssl_vectors_expire_by_the_injected_clock() -> None:
    late = FakeClock(datetime(2130, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidSvid, match="expired at"):
        verify_x509_svid(
            _load("leaf.pem"), [_load("intermediate.pem")], [_load("root.pem")], TD, late
        )
