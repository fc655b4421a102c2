"""A mixed EC + ML-DSA-65 rollout with a real server, a real agent and py-spiffe workloads:
`trustd entry create --key-type ml-dsa-65` gives one workload an ML-DSA-65 SVID while the
other keeps its EC one, both under the one bundle, each verifying its peer's SVID; the
agent's mTLS to the server (Python ssl, OpenSSL 3.0 here) is unaffected, and what today's
clients cannot do with ML-DSA is shown, not assumed (README, Post-quantum).
"""

from __future__ import annotations

import itertools
import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.keys import describe_key
from pki.spiffe_id import TrustDomain
from pki.x509_svid import verify_x509_svid
from tests.integration.conftest import error_line, serve_once, start_server
from tests.integration.test_agent import Node, admin, agent_on, wait_for
from tests.integration.test_pki_lint import _assert_no_errors, _lint, _tool, _write
from trustd.settings import load_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs workloads as other users"),
]
EC_UID, PQ_UID, EC_PEER_UID = 2101, 2102, 2103
TD = TrustDomain.parse("example.org")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    server = start_server(
        tmp_path / "var", tmp_path / "server.log", TRUSTD_ADDITIONAL_CA_KEY_TYPES="ml-dsa-65"
    )

    def entries(node_id: str) -> None:
        for path, uid, key_type in (
            ("/ec", EC_UID, None),
            ("/pq", PQ_UID, "ml-dsa-65"),
            ("/ec-peer", EC_PEER_UID, None),
        ):
            extra = ("--key-type", key_type) if key_type else ()
            admin(
                server,
                "entry",
                "create",
                "--spiffe-id",
                f"spiffe://example.org{path}",
                "--parent-id",
                node_id,
                "--selector",
                f"unix:uid:{uid}",
                *extra,
            )

    with agent_on(server, tmp_path, entries) as node:
        yield node


def _svid(node: Node, uid: int) -> dict[str, object]:
    _, got = wait_for(lambda: (r := node.run(uid, "x509-pem"))[0] == 0 and r, 30, "an SVID")
    return dict(got)


def test_each_workload_gets_the_svid_its_entry_asks_for(node: Node, tmp_path: Path) -> None:
    listed = json.loads(admin(node.server, "entry", "list", "--output", "json"))
    assert sorted(str(e["key_type"]) for e in listed["entries"]) == ["None", "None", "ml-dsa-65"]
    ec_svid, pq_svid = _svid(node, EC_UID), _svid(node, PQ_UID)
    # py-spiffe 0.3 parses both: it reads keys and certificates with `cryptography`, which
    # knows ML-DSA, and takes the bundle over the Workload API as DER certificates.
    assert ec_svid["key"] == "ECPrivateKey"
    assert pq_svid["key"] == "MLDSA65PrivateKey"
    clock = SystemClock()
    chains = {}
    for name, svid in (("ec", ec_svid), ("pq", pq_svid)):
        certs = load_pem_certificates("".join(svid["chain"]).encode())  # type: ignore[arg-type]
        roots = load_pem_certificates("".join(svid["bundle"]).encode())  # type: ignore[arg-type]
        assert sorted(describe_key(r.public_key()) for r in roots) == ["EC secp256r1", "ML-DSA-65"]
        chains[name] = (certs, roots)
    assert describe_key(chains["pq"][0][0].public_key()) == "ML-DSA-65"
    assert describe_key(chains["ec"][0][0].public_key()) == "EC secp256r1"
    # pkilint on what the server issued on its ML-DSA-65 chain: no error (beyond the SPIFFE
    # URI false positive `_lint` excuses). Its signer/signee check cannot verify ML-DSA
    # signatures (pkilint 0.13: a NOTICE, `pkix.unsupported_algorithm`); trustd's path
    # validation and `cryptography` do (tests/functional/test_entry_key_types.py).
    (leaf_cert, pq_intermediate), pq_roots = chains["pq"]
    [pq_root] = [r for r in pq_roots if describe_key(r.public_key()) == "ML-DSA-65"]
    files = [
        _write(tmp_path, f"{name}.pem", cert)
        for name, cert in (("root", pq_root), ("int", pq_intermediate), ("leaf", leaf_cert))
    ]
    for path in files:
        _assert_no_errors(_lint(_tool("lint_pkix_cert"), str(path)))
    signer_signee = _tool("lint_pkix_signer_signee_cert_chain")
    for issuer, subject in itertools.pairwise(files):
        findings = _lint(signer_signee, str(issuer), str(subject))
        assert [(f[0], f[2]) for f in findings] == [("NOTICE", "pkix.unsupported_algorithm")]

    # Each workload verifies its peer's SVID against the bundle it holds itself.
    for me, peer in (("ec", "pq"), ("pq", "ec")):
        leaf, *intermediates = chains[peer][0]
        verified = verify_x509_svid(leaf, intermediates, chains[me][1], TD, clock)
        assert verified.path == f"/{peer}"

    # EC workloads keep talking mTLS through Python ssl with the ML-DSA root in their
    # trust store (OpenSSL loads it and never picks it for an EC chain).
    server = node.start(EC_UID, "mtls-server")
    assert server.stdout is not None
    port = json.loads(server.stdout.readline())["port"]
    code, client = node.run(EC_PEER_UID, "mtls-client", str(port))
    assert code == 0, client
    assert client["peer"] == "spiffe://example.org/ec"
    server.communicate(timeout=30)

    # Moving one more workload over: its entry now asks for ML-DSA-65, and the agent
    # replaces the EC SVID it holds with an ML-DSA-65 one.
    [peer] = [e for e in listed["entries"] if e["spiffe_id"].endswith("/ec-peer")]
    admin(node.server, "entry", "update", peer["id"], "--key-type", "ml-dsa-65")
    wait_for(
        lambda: node.run(EC_PEER_UID, "x509-pem")[1].get("key") == "MLDSA65PrivateKey",
        30,
        "the ec-peer workload's ML-DSA-65 SVID",
    )

    # An ML-DSA workload cannot use its SVID for TLS through Python ssl before OpenSSL 3.5:
    # OpenSSL 3.0 cannot decode the key and reports it as too small.
    pq_tls = node.start(PQ_UID, "mtls-server")
    out, err = pq_tls.communicate(timeout=60)
    if ssl.OPENSSL_VERSION_INFO < (3, 5):
        assert pq_tls.returncode != 0
        assert "EE_KEY_TOO_SMALL" in err, err
    else:
        assert "port" in out, err
        pq_tls.kill()


def test_an_ml_dsa_trust_domain_without_an_ec_chain_is_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    if ssl.OPENSSL_VERSION_INFO >= (3, 5):
        # Agents' Python ssl verifies ML-DSA there: nothing to refuse.
        assert load_settings(key_type="ml-dsa-65").tls_key_type == "ml-dsa-65"
        return
    line = error_line(serve_once(tmp_path / "var", TRUSTD_KEY_TYPE="ml-dsa-65"))
    assert "agents could not connect" in line
    assert "TRUSTD_ADDITIONAL_CA_KEY_TYPES=ec-p256" in line
    assert not (tmp_path / "var" / "bundle.pem").exists()
