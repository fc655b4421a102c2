"""Attesting a node over the API with a join token, for tests that need an attested node
without running an agent (the functional tests' TestClient and the e2e tests' httpx
client alike: TestClient is an httpx.Client)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key


def attest_join_token(
    client: httpx.Client, headers: Mapping[str, str], selectors: Sequence[str] = ()
) -> str:
    """Create a join token (admin `headers`), attest with it; the node's SPIFFE ID."""
    token = client.post("/v1/join-tokens", json={"selectors": list(selectors)}, headers=headers)
    assert token.status_code == 201, token.text
    attested = client.post(
        "/v1/attest",
        json={
            "attestor": "join_token",
            "evidence": {"token": token.json()["token"]},
            "csr": create_csr(generate_private_key(KeyType.EC_P256)),
        },
    )
    assert attested.status_code == 201, attested.text
    spiffe_id: str = attested.json()["spiffe_id"]
    return spiffe_id
