"""k8s_psat and x509pop node attestation: real tokens and certificates, forged and replayed
evidence."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pki.bundle import public_key_to_jwk
from pki.ca import certificate_pem
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.functional.conftest import Server, ServerFactory
from trustd.attestation.x509pop import sign_challenge

ISSUER = "https://kubernetes.default.svc.cluster.local"


@pytest.fixture
def cluster_key(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**public_key_to_jwk(key.public_key()), "kid": "k8s-1", "use": "sig"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def psat(key: Any, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": ["trustd"],
        "sub": "system:serviceaccount:trustd:agent",
        "iat": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": "trustd",
            "serviceaccount": {"name": "agent", "uid": "sa-uid"},
            "pod": {"name": "agent-x7", "uid": "pod-uid"},
            "node": {"name": "worker-1", "uid": "node-uid-1"},
        },
    }
    headers = overrides.pop("headers", {"kid": "k8s-1"})
    algorithm = overrides.pop("algorithm", "RS256")
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def attest(server: Server, attestor: str, evidence: dict[str, Any]) -> Any:
    return server.client.post(
        "/v1/attest",
        json={
            "attestor": attestor,
            "evidence": evidence,
            "csr": create_csr(generate_private_key(KeyType.EC_P256)),
        },
    )


def test_k8s_psat(server_factory: ServerFactory, cluster_key: tuple[Any, Path]) -> None:
    key, jwks = cluster_key
    server = server_factory(k8s_clusters={"prod": {"issuer": ISSUER, "jwks_file": jwks}})
    token = psat(key)
    ok = attest(server, "k8s_psat", {"cluster": "prod", "token": token})
    assert ok.status_code == 201, ok.text
    assert ok.json()["spiffe_id"] == "spiffe://example.org/trustd/agent/k8s_psat/prod/node-uid-1"
    node = server.client.get("/v1/nodes", headers=server.auth).json()[0]
    assert {"k8s_psat:agent_ns:trustd", "k8s_psat:agent_node_name:worker-1"} <= set(
        node["selectors"]
    )
    replay = attest(server, "k8s_psat", {"cluster": "prod", "token": token})
    assert replay.status_code == 401
    assert "already used" in replay.json()["detail"]

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for evidence, reason in [
        ({"cluster": "prod", "token": psat(key, aud=["someone-else"])}, "Audience"),
        ({"cluster": "prod", "token": psat(key, iss="https://evil")}, "issuer"),
        ({"cluster": "prod", "token": psat(key, exp=int(time.time()) - 300)}, "expired"),
        ({"cluster": "prod", "token": psat(other_key)}, "Signature"),
        ({"cluster": "prod", "token": psat(key, headers={"kid": "other"})}, "JWKS"),
        (
            {
                "cluster": "prod",
                "token": psat(b"secret-bytes-for-hmac-0123456789", algorithm="HS256"),
            },
            "not allowed",
        ),
        ({"cluster": "prod", "token": psat(None, algorithm="none")}, "not allowed"),
        ({"cluster": "staging", "token": psat(key)}, "not configured"),
    ]:
        response = attest(server, "k8s_psat", evidence)
        assert response.status_code == 401, (reason, response.text)
        assert reason.lower() in response.json()["detail"].lower(), response.json()["detail"]


def _ca() -> tuple[x509.Certificate, Any]:
    key = generate_private_key(KeyType.EC_P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: Any, cn: str) -> tuple[x509.Certificate, Any]:
    key = generate_private_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def test_x509pop(server_factory: ServerFactory, tmp_path: Path) -> None:
    ca, ca_key = _ca()
    bundle = tmp_path / "node-ca.pem"
    bundle.write_text(certificate_pem(ca))
    server = server_factory(x509pop_ca_bundle=bundle)
    leaf, key = _leaf(ca, ca_key, "node-1.internal")
    chain = [certificate_pem(leaf)]
    challenge = server.client.post(
        "/v1/attest/challenge", json={"attestor": "x509pop", "evidence": {"chain": chain}}
    ).json()["challenge"]
    evidence = {"chain": chain, "challenge": challenge, "signature": sign_challenge(key, challenge)}
    ok = attest(server, "x509pop", evidence)
    assert ok.status_code == 201, ok.text
    node = server.client.get("/v1/nodes", headers=server.auth).json()[0]
    assert "x509pop:subject:cn:node-1.internal" in node["selectors"]

    replay = attest(server, "x509pop", evidence)
    assert replay.status_code == 401
    assert "already answered" in replay.json()["detail"]

    # Someone holding only the certificate cannot answer: the signature is checked.
    stranger = generate_private_key(KeyType.EC_P256)
    fresh = server.client.post(
        "/v1/attest/challenge", json={"attestor": "x509pop", "evidence": {"chain": chain}}
    ).json()["challenge"]
    forged = attest(
        server,
        "x509pop",
        {"chain": chain, "challenge": fresh, "signature": sign_challenge(stranger, fresh)},
    )
    assert forged.status_code == 401
    assert "signature" in forged.json()["detail"]

    # A challenge issued for one certificate does not serve another.
    other_leaf, other_key = _leaf(ca, ca_key, "node-2.internal")
    swapped = attest(
        server,
        "x509pop",
        {
            "chain": [certificate_pem(other_leaf)],
            "challenge": fresh,
            "signature": sign_challenge(other_key, fresh),
        },
    )
    assert swapped.status_code == 401
    assert "another certificate" in swapped.json()["detail"]

    # A certificate from an unknown CA gets no challenge at all.
    rogue_ca, rogue_key = _ca()
    rogue_leaf, _ = _leaf(rogue_ca, rogue_key, "node-1.internal")
    refused = server.client.post(
        "/v1/attest/challenge",
        json={"attestor": "x509pop", "evidence": {"chain": [certificate_pem(rogue_leaf)]}},
    )
    assert refused.status_code == 401
    assert "not trusted" in refused.json()["detail"]
