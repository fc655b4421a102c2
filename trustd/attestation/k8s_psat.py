"""`k8s_psat`: a Kubernetes projected service-account token, verified against the cluster's
issuer, audience and signing keys (JWKS exported from the API server's
`/openid/v1/jwks`). Kubernetes signs these with RS256 or ES256.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from pki.bundle import public_key_from_jwk
from pki.errors import InvalidBundle, WeakKey
from pki.keys import PublicKey, jose_public_key
from pki.selectors import Selector
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    AttestationResult,
    EvidenceReplayed,
    require_str,
)

# Never `none`, never HMAC: the key comes from the cluster's JWKS, never from the token.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
_LEEWAY = timedelta(seconds=30)


@dataclass(frozen=True)
class Cluster:
    name: str
    issuer: str
    audience: str
    keys: dict[str, PublicKey]


def load_cluster(name: str, issuer: str, audience: str, jwks_file: Path) -> Cluster:
    """Raises:
    AttestationFailed: the JWKS file cannot be read or holds no usable key.
    """
    try:
        document = json.loads(jwks_file.read_text())
        keys = {
            str(jwk["kid"]): public_key_from_jwk(jwk)
            for jwk in document.get("keys", [])
            if jwk.get("use", "sig") == "sig" and "kid" in jwk
        }
    except (OSError, ValueError, KeyError, InvalidBundle) as exc:
        raise AttestationFailed(f"cluster {name!r}: cannot load JWKS {jwks_file}: {exc}") from None
    if not keys:
        raise AttestationFailed(f"cluster {name!r}: JWKS {jwks_file} has no signing key with kid")
    return Cluster(name, issuer, audience, keys)


def _claim(claims: dict[str, Any], *path: str) -> str:
    node: Any = claims
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, str) or not node:
        raise AttestationFailed(f"token lacks the claim {'.'.join(path)}")
    return node


class K8sPsatAttestor:
    name = "k8s_psat"

    def __init__(self, clusters: dict[str, Cluster]) -> None:
        self._clusters = clusters

    def attest(
        self, evidence: dict[str, Any], now: datetime, context: AttestationContext
    ) -> AttestationResult:
        cluster_name = require_str(evidence, "cluster", 253)
        token = require_str(evidence, "token")
        cluster = self._clusters.get(cluster_name)
        if cluster is None:
            raise AttestationFailed(f"cluster {cluster_name!r} is not configured")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AttestationFailed(f"token is not a JWT: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise AttestationFailed(f"token algorithm {alg!r} is not allowed")
        key = cluster.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AttestationFailed("token is signed by a key the cluster's JWKS does not hold")
        try:
            verifier = jose_public_key(key)
        except WeakKey as exc:
            raise AttestationFailed(exc.detail) from None
        try:
            # exp and nbf are checked below against the injected clock, not wall time.
            claims = jwt.decode(
                token,
                verifier,
                algorithms=[alg],
                audience=cluster.audience,
                issuer=cluster.issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud", "sub"],
                },
            )
        except jwt.PyJWTError as exc:
            raise AttestationFailed(f"token rejected: {exc}") from None
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        if expires + _LEEWAY <= now:
            raise AttestationFailed("token has expired")
        if "nbf" in claims and datetime.fromtimestamp(int(claims["nbf"]), UTC) - _LEEWAY > now:
            raise AttestationFailed("token is not valid yet")
        namespace = _claim(claims, "kubernetes.io", "namespace")
        account = _claim(claims, "kubernetes.io", "serviceaccount", "name")
        pod_name = _claim(claims, "kubernetes.io", "pod", "name")
        pod_uid = _claim(claims, "kubernetes.io", "pod", "uid")
        node_name = _claim(claims, "kubernetes.io", "node", "name")
        node_uid = _claim(claims, "kubernetes.io", "node", "uid")
        for value in (cluster_name, node_uid):
            if not _SEGMENT.match(value):
                raise AttestationFailed(f"{value!r} cannot name a node")
        # A PSAT stays valid for its lifetime; accepting it once only stops a stolen copy
        # from attesting a second agent.
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            context.replay.claim(digest, self.name, expires)
        except EvidenceReplayed:
            raise AttestationFailed("token was already used to attest") from None
        selectors = {
            Selector(self.name, f"cluster:{cluster_name}"),
            Selector(self.name, f"agent_ns:{namespace}"),
            Selector(self.name, f"agent_sa:{account}"),
            Selector(self.name, f"agent_pod_name:{pod_name}"),
            Selector(self.name, f"agent_pod_uid:{pod_uid}"),
            Selector(self.name, f"agent_node_name:{node_name}"),
            Selector(self.name, f"agent_node_uid:{node_uid}"),
        }
        return AttestationResult(f"{cluster_name}/{node_uid}", frozenset(selectors))
