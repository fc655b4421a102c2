"""Entries that ask for an SVID key type, on SQLite and PostgreSQL: validation against the
CA chains the trust domain keeps, a mixed EC + ML-DSA-65 trust domain issuing each entry
the SVID it asks for (chains checked by trustd's path validation and by `cryptography`),
CRLs and OCSP signed with ML-DSA, and an ML-DSA-65 trust domain whose server and agents
stay on its EC chain."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509 import ocsp
from cryptography.x509.verification import PolicyBuilder, Store
from sqlmodel import Session, func, select

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates
from pki.clock import FakeClock, SystemClock
from pki.csr import create_csr
from pki.keys import KeyType, describe_key, generate_private_key, key_type_of
from pki.revocation import load_crl
from pki.rotation import KeyKind as CaKeyKind
from pki.spiffe_id import TrustDomain
from pki.x509_path import validate_path
from pki.x509_svid import verify_x509_svid
from tests.functional.conftest import Server, ServerFactory, make_settings
from tests.functional.test_nodes_entries import attest, entry, join_token, node_headers
from tests.functional.test_revocation_api import _problem
from trustd.bootstrap import initialise, migrate
from trustd.domain.certificates import CertificateKind
from trustd.services.auth import Principal, Role
from trustd.services.container import Services, build_services
from trustd.services.issuance import IssuanceRequest
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import CaKey
from trustd.store.entries import RegistrationEntry

TD = TrustDomain.parse("example.org")
ML = KeyType.ML_DSA_65
PARENT = "spiffe://example.org/trustd/agent/join_token/x"


def _rows(server: Server) -> tuple[int, int]:
    with Session(server.services.engine) as session:
        entries = session.exec(select(func.count()).select_from(RegistrationEntry)).one()
        audits = session.exec(select(func.count()).select_from(AuditEvent)).one()
        return int(entries), int(audits)


def test_an_entry_asks_only_for_a_key_type_the_trust_domain_can_sign(server: Server) -> None:
    before = _rows(server)
    refused = _problem(
        entry(server, "spiffe://example.org/pq", PARENT, "unix:uid:1", key_type=str(ML)), 400
    )
    assert "no ml-dsa-65 CA chain" in refused["detail"]
    assert "TRUSTD_ADDITIONAL_CA_KEY_TYPES" in refused["detail"]
    unknown = entry(server, "spiffe://example.org/pq", PARENT, "unix:uid:1", key_type="ml-dsa-66")
    assert unknown.status_code == 422
    assert unknown.headers["content-type"] == "application/problem+json"
    assert _rows(server) == before

    # Any classical key type is signed by the classical chain.
    created = entry(server, "spiffe://example.org/ec", PARENT, "unix:uid:2", key_type="ec-p384")
    assert created.status_code == 201, created.text
    assert created.json()["key_type"] == "ec-p384"
    entry_id = created.json()["id"]
    url = f"/v1/entries/{entry_id}"
    refused = _problem(
        server.client.patch(url, json={"key_type": str(ML)}, headers=server.auth), 400
    )
    assert "TRUSTD_ADDITIONAL_CA_KEY_TYPES" in refused["detail"]
    assert server.client.get(url, headers=server.auth).json()["key_type"] == "ec-p384"
    # Leaving key_type out changes nothing; `default` puts the entry back on TRUSTD_KEY_TYPE.
    same = server.client.patch(url, json={"hint": "h"}, headers=server.auth).json()
    assert same["key_type"] == "ec-p384"
    back = server.client.patch(url, json={"key_type": "default"}, headers=server.auth)
    assert back.status_code == 200 and back.json()["key_type"] is None


class Node:
    def __init__(self, server: Server) -> None:
        identity, _ = attest(server, join_token(server)["token"])
        # trustd's own TLS stays on the classical chain: the node SVID is EC.
        assert isinstance(identity.chain[0].public_key(), ec.EllipticCurvePublicKey)
        self.server = server
        self.spiffe_id = str(identity.spiffe_id)
        self.headers = node_headers(server, identity)

    def sync(self) -> dict[str, Any]:
        response = self.server.client.get(
            "/v1/agents/sync", params={"wait": 0, "since": 0}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def sign(self, entry_id: str, key_type: KeyType) -> dict[str, Any]:
        csr = create_csr(generate_private_key(key_type))
        response = self.server.client.post(
            "/v1/agents/svids",
            json={"csrs": [{"entry_id": entry_id, "csr": csr}]},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def _chain(signed: dict[str, Any]) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    [svid] = signed["svids"]
    leaf = load_pem_certificates(svid["certificate"].encode())[0]
    return leaf, tuple(load_pem_certificates("".join(svid["intermediates"]).encode()))


def _verified_by_cryptography(
    leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...], root: x509.Certificate
) -> None:
    """Every signature of the chain checked by `cryptography` (ML-DSA per RFC 9881 as well
    as EC). Its path verifier (`PolicyBuilder`) refuses the URI name constraints every
    trustd intermediate carries ("unsupported name constraint", see pki/x509_path.py), so
    it cannot build the path itself: each link is checked with
    `verify_directly_issued_by`, and the path rules by `pki.x509_path.validate_path`."""
    path = [leaf, *intermediates, root]
    for child, parent in itertools.pairwise(path):
        child.verify_directly_issued_by(parent)
    validate_path(path, SystemClock().now())
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    with pytest.raises(x509.verification.VerificationError, match="name constraint"):
        verifier.verify(leaf, list(intermediates))


def test_a_mixed_trust_domain_issues_each_entry_the_svid_it_asks_for(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(additional_ca_key_types=[str(ML)])
    jwks = server.client.get("/v1/bundle").json()
    x509_keys = [k for k in jwks["keys"] if k["use"] == "x509-svid"]
    assert sorted(k["kty"] for k in x509_keys) == ["AKP", "EC"]
    assert [k["alg"] for k in x509_keys if k["kty"] == "AKP"] == ["ML-DSA-65"]
    bundle = TrustBundle.from_jwks(jwks, TD)
    roots = {key_type_of(r.public_key()): r for r in bundle.x509_authorities}
    assert set(roots) == {KeyType.EC_P256, ML}

    node = Node(server)
    ec_entry = entry(server, "spiffe://example.org/ec", node.spiffe_id, "unix:uid:1").json()
    pq_entry = entry(
        server, "spiffe://example.org/pq", node.spiffe_id, "unix:uid:2", key_type=str(ML)
    ).json()
    synced = {e["id"]: e for e in node.sync()["entries"]}
    assert synced[ec_entry["id"]]["key_type"] is None
    assert synced[pq_entry["id"]]["key_type"] == "ml-dsa-65"
    assert node.sync()["default_key_type"] == "ec-p256"

    ec_leaf, ec_chain = _chain(node.sign(ec_entry["id"], KeyType.EC_P256))
    pq_leaf, pq_chain = _chain(node.sign(pq_entry["id"], ML))
    assert isinstance(ec_leaf.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(pq_leaf.public_key(), mldsa.MLDSA65PublicKey)
    # Each under its own chain: ML-DSA-65 intermediate and root for the ML-DSA leaf.
    assert [describe_key(c.public_key()) for c in pq_chain] == ["ML-DSA-65"]
    assert [describe_key(c.public_key()) for c in ec_chain] == ["EC secp256r1"]
    _verified_by_cryptography(pq_leaf, pq_chain, roots[ML])
    _verified_by_cryptography(ec_leaf, ec_chain, roots[KeyType.EC_P256])
    # Each workload verifies its peer's SVID against the one bundle it holds, both ways.
    clock = SystemClock()
    for leaf, chain in ((ec_leaf, ec_chain), (pq_leaf, pq_chain)):
        verify_x509_svid(leaf, chain, bundle.x509_authorities, TD, clock)
    # A workload that only knows the EC root (a reader that ignores AKP JWKs) keeps
    # verifying the EC SVIDs.
    verify_x509_svid(ec_leaf, ec_chain, [roots[KeyType.EC_P256]], TD, clock)

    # The wrong key type for an entry is refused alone, saying what to do.
    [refused] = node.sign(pq_entry["id"], KeyType.EC_P256)["refused"]
    assert "asks for a ml-dsa-65 key" in refused["detail"]
    assert "--key-type ml-dsa-65" in refused["detail"]
    [refused] = node.sign(ec_entry["id"], ML)["refused"]
    assert "ML-DSA-65 CSR keys are not accepted" in refused["detail"]
    [refused] = node.sign(pq_entry["id"], KeyType.ML_DSA_44)["refused"]
    assert "asks for a ml-dsa-65 key, the CSR holds ML-DSA-44" in refused["detail"]

    # An administrator's ML-DSA CSR is signed only when the request asks for ML-DSA-65.
    body = {
        "spiffe_id": "spiffe://example.org/admin-pq",
        "csr": create_csr(generate_private_key(ML)),
    }
    plain = server.client.post("/v1/svid/x509", json=body, headers=server.auth)
    assert "ML-DSA-65 CSR keys are not accepted" in _problem(plain, 400)["detail"]
    asked = server.client.post(
        "/v1/svid/x509", json={**body, "key_type": str(ML)}, headers=server.auth
    )
    assert asked.status_code == 201, asked.text
    admin_leaf = load_pem_certificates(asked.json()["certificate"].encode())[0]
    assert isinstance(admin_leaf.public_key(), mldsa.MLDSA65PublicKey)

    # The ML-DSA intermediate signs its CRL and OCSP answers with ML-DSA.
    pq_kid = server.services.ca.state.chains[str(ML)].authority_kid
    crl = load_crl(server.client.get(f"/v1/crl/{pq_kid}").content, pq_chain[0])
    assert crl.signature_algorithm_oid.dotted_string == "2.16.840.1.101.3.4.3.18"
    request = ocsp.OCSPRequestBuilder().add_certificate(pq_leaf, pq_chain[0], hashes.SHA256())
    answer = server.client.post(
        "/v1/ocsp",
        content=request.build().public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert answer.status_code == 200, answer.text
    response = ocsp.load_der_ocsp_response(answer.content)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    public = pq_chain[0].public_key()
    assert isinstance(public, mldsa.MLDSA65PublicKey)
    public.verify(response.signature, response.tbs_response_bytes)

    # Every CA key is recorded with its chain.
    with Session(server.services.engine) as session:
        chains = sorted((r.chain, r.kind, r.key_type) for r in session.exec(select(CaKey)))
    assert chains == [
        ("classical", "jwt", "ec-p256"),
        ("classical", "x509-intermediate", "ec-p256"),
        ("classical", "x509-root", "ec-p256"),
        ("ml-dsa-65", "x509-intermediate", "ml-dsa-65"),
        ("ml-dsa-65", "x509-root", "ml-dsa-65"),
    ]


def test_an_ml_dsa_65_trust_domain_keeps_its_server_and_agents_on_ec(
    server_factory: ServerFactory,
) -> None:
    """TRUSTD_KEY_TYPE=ml-dsa-65 with an EC chain beside it: workloads get ML-DSA-65 SVIDs
    by default, while the serving certificate and node SVIDs, which agents' Python ssl
    (OpenSSL 3.0 here) must verify, are EC."""
    server = server_factory(key_type=str(ML), additional_ca_key_types=["ec-p256"])
    issued, key = server.services.issuer.issue_serving_certificate(["localhost"], [])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(issued.intermediates[0].public_key(), ec.EllipticCurvePublicKey)
    node = Node(server)
    default = entry(server, "spiffe://example.org/w", node.spiffe_id, "unix:uid:1").json()
    classic = entry(
        server, "spiffe://example.org/c", node.spiffe_id, "unix:uid:2", key_type="ec-p256"
    ).json()
    assert default["key_type"] is None
    assert node.sync()["default_key_type"] == "ml-dsa-65"
    leaf, chain = _chain(node.sign(default["id"], ML))
    assert isinstance(leaf.public_key(), mldsa.MLDSA65PublicKey)
    bundle = TrustBundle.from_jwks(server.client.get("/v1/bundle").json(), TD)
    verify_x509_svid(leaf, chain, bundle.x509_authorities, TD, SystemClock())
    [root] = [r for r in bundle.x509_authorities if key_type_of(r.public_key()) is ML]
    _verified_by_cryptography(leaf, chain, root)
    # An entry on the default takes only ML-DSA-65 keys; one asking for EC gets EC.
    [refused] = node.sign(default["id"], KeyType.EC_P256)["refused"]
    assert "asks for a ml-dsa-65 key" in refused["detail"]
    ec_leaf, _ = _chain(node.sign(classic["id"], KeyType.EC_P256))
    assert isinstance(ec_leaf.public_key(), ec.EllipticCurvePublicKey)


def test_the_ml_dsa_chain_rotates_by_hand_like_the_ec_one(server_factory: ServerFactory) -> None:
    server = server_factory(additional_ca_key_types=[str(ML)])
    client, auth = server.client, server.auth
    ca = server.services.ca
    ec_kid, pq_kid = ca.state.authority_kid, ca.state.chains[str(ML)].authority_kid
    before = sorted((r.kid, r.status) for r in ca.state.keys)
    for body in (
        {"kind": "x509-intermediate", "chain": "ml-dsa-87"},
        {"kind": "jwt", "chain": str(ML)},
    ):
        _problem(client.post("/v1/admin/ca/prepare", json=body, headers=auth), 400)
    assert sorted((r.kid, r.status) for r in ca.state.keys) == before

    body = {"kind": "x509-intermediate", "chain": str(ML)}
    prepared = client.post("/v1/admin/ca/prepare", json=body, headers=auth)
    assert prepared.status_code == 200, prepared.text
    # The EC chain has no prepared key: activating it is refused, the ML-DSA one's works.
    _problem(
        client.post("/v1/admin/ca/activate", json={"kind": "x509-intermediate"}, headers=auth), 409
    )
    activated = client.post("/v1/admin/ca/activate", json=body, headers=auth)
    assert activated.status_code == 200, activated.text
    assert activated.json()["kid"] == prepared.json()["kid"]
    assert ca.state.chains[str(ML)].authority_kid == prepared.json()["kid"] != pq_kid
    assert ca.state.authority_kid == ec_kid
    keys = {k["kid"]: k for k in client.get("/v1/admin/ca/keys", headers=auth).json()}
    assert (keys[pq_kid]["chain"], keys[pq_kid]["status"]) == (str(ML), "old")
    assert (keys[ec_kid]["chain"], keys[ec_kid]["status"]) == ("classical", "active")


def test_an_ml_dsa_chain_added_to_a_deployment_and_wound_down_again(
    tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    migrate(database_url)

    def start(**overrides: object) -> Services:
        settings = make_settings(tmp_path, database_url, **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        services = build_services(settings, clock)
        initialise(services)
        services.ca.load()
        return services

    first = start()
    assert set(first.ca.state.chains) == {"classical"}
    first.engine.dispose()
    # A restart with the ML-DSA chain configured makes it, next to the EC chain kept.
    mixed = start(additional_ca_key_types=[str(ML)])
    assert set(mixed.ca.state.chains) == {"classical", str(ML)}
    assert len(mixed.ca.state.bundle.x509_authorities) == 2
    issued = asyncio.run(
        mixed.issuer.issue(
            IssuanceRequest(
                kind=CertificateKind.X509_SVID,
                spiffe_id="spiffe://example.org/pq",
                actor="test",
                csr=create_csr(generate_private_key(ML)).encode(),
                key_type=ML,
            )
        )
    )
    # A prepared ML-DSA intermediate too: it signed nothing and leaves with the others.
    mixed.rotation.prepare(
        Principal("test", Role.ADMIN), CaKeyKind.X509_INTERMEDIATE, chain=str(ML)
    )
    mixed.engine.dispose()

    # Dropped from the settings: its keys stop signing and leave the bundle once what
    # they signed has expired.
    plain = start()
    assert set(plain.ca.state.chains) == {"classical"}
    plain.rotation.tick()
    pq_rows = [r for r in plain.ca.state.keys if r.chain == str(ML)]
    assert [r.status for r in pq_rows] == ["old"] * 3
    assert len(plain.ca.state.bundle.x509_authorities) == 2
    clock.advance(issued.certificate.not_valid_after_utc - clock.now() + timedelta(minutes=1))
    plain.rotation.tick()
    plain.rotation.tick()
    assert [r for r in plain.ca.state.keys if r.chain == str(ML)] == []
    assert len(plain.ca.state.bundle.x509_authorities) == 1
    plain.engine.dispose()
