"""The agent's side of the server API: first-contact pinning, attestation, node credentials,
sync, and SVID requests. Private keys are made here and never sent: only CSRs travel.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import jwt
import structlog
from cryptography import x509

from pki.bundle import TrustBundle
from pki.ca import fingerprint_sha256, load_pem_certificates, serial_hex
from pki.clock import Clock
from pki.csr import create_csr
from pki.errors import TrustdError
from pki.keys import PrivateKey, jose_private_key, jws_algorithm
from pki.keys.held import HeldEcKey
from pki.spiffe_id import SpiffeId, TrustDomain
from trustd import tracing
from trustd.domain.flows import FlowBatch, FlowBatchResult

log = structlog.get_logger("trustd.agent")
NODE_CREDENTIAL_TYPE = "trustd-node+jwt"
CREDENTIAL_LIFETIME = timedelta(seconds=120)


# The RFC 9457 problem type the server answers for an evicted or banned node
# (`trustd.errors.NodeInactive`).
NODE_INACTIVE = "urn:trustd:problem:node-inactive"


class ServerError(TrustdError):
    """The server refused a request (`status` set) or could not be reached (`status` 0)."""

    title = "Server request failed"

    @property
    def status(self) -> int:
        value = self.fields.get("status", 0)
        return value if isinstance(value, int) else 0

    @property
    def node_inactive(self) -> bool:
        """The server voided this node's credentials (evicted or banned): retrying cannot
        help, only a new attestation can."""
        return self.fields.get("problem") == NODE_INACTIVE


@dataclass(frozen=True)
class NodeIdentity:
    """The node SVID and its key, as held on disk and in memory."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey

    @property
    def serial(self) -> str:
        return serial_hex(self.chain[0])


def pin_first_contact(server: str, ca_sha256: str, timeout: float = 10.0) -> TrustBundle:
    """Fetch the bundle without trusting anyone yet, then keep it only if one of its roots
    has the fingerprint the operator gave (`trustd token create` prints it). From then on
    every connection verifies the server against this bundle.

    Raises:
        ServerError: unreachable, or no root matches the pinned fingerprint.
    """
    wanted = ca_sha256.replace(":", "").lower()
    # Verification is off for this one request only: the pin below is the trust decision.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        response = httpx.get(f"{server}/v1/bundle", verify=insecure, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ServerError(f"cannot fetch the trust bundle from {server}: {exc}") from None
    roots = _roots_of(document)
    if not any(fingerprint_sha256(root) == wanted for root in roots):
        raise ServerError(
            f"no CA at {server} has the pinned SHA-256 fingerprint {wanted}; "
            "check --ca-sha256 against `trustd ca show` on the server"
        )
    return TrustBundle.from_jwks(document, _trust_domain_of(roots))


def _roots_of(document: dict[str, Any]) -> list[x509.Certificate]:
    roots = []
    for key in document.get("keys", []):
        if key.get("use") == "x509-svid":
            for der in key.get("x5c", [])[:1]:
                roots.append(x509.load_der_x509_certificate(base64.b64decode(der)))
    return roots


def _trust_domain_of(roots: Sequence[x509.Certificate]) -> TrustDomain:
    for root in roots:
        try:
            san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            return SpiffeId.parse(uri).trust_domain
    raise ServerError("the server's roots do not name their trust domain")


class ServerClient:
    """The server API, over one or more server addresses (replicas, or load balancers in
    front of them). Requests go to the address that last answered. A connection refused or
    timed out means the request never reached a server: it is tried on the next address
    at once, each address once. Any other transport error or a 5xx (a replica killed
    mid-request, one whose database is down) leaves the outcome unknown: the caller gets
    `ServerError` as with one address, and its next request goes to the next address
    (the callers' loops retry with backoff). The callers' cursors (`since`, the verdict
    and revocation revisions) are the same on every replica, so a replica taking over
    answers the delta from them."""

    def __init__(
        self,
        server: str | Sequence[str],
        bundle: TrustBundle,
        clock: Clock,
        timeout: float = 40.0,
    ):
        servers = [server] if isinstance(server, str) else list(server)
        if not servers:
            raise ValueError("a ServerClient needs at least one server address")
        self._servers = [s.rstrip("/") for s in servers]
        self._current = 0
        self._clock = clock
        self.server_id = str(SpiffeId.from_parts(bundle.trust_domain, "/trustd/server"))
        self._timeout = timeout
        self._client = self._new_client(bundle)
        self._credential: tuple[float, str, str] | None = None

    @property
    def server(self) -> str:
        """The address requests go to now."""
        return self._servers[self._current]

    def _new_client(self, bundle: TrustBundle) -> httpx.AsyncClient:
        tls = ssl.create_default_context(cadata=bundle.to_pem())
        return httpx.AsyncClient(verify=tls, timeout=self._timeout)

    async def update_bundle(self, bundle: TrustBundle) -> None:
        """Trust a new bundle (after a CA rotation) from the next request on."""
        old, self._client = self._client, self._new_client(bundle)
        await old.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _fail_over(self, failed: int, reason: str) -> None:
        """Send the next requests to the address after `failed` (unless another request
        moved on already)."""
        if len(self._servers) > 1 and self._current == failed:
            self._current = (failed + 1) % len(self._servers)
            log.warning(
                "server_failover",
                failed=self._servers[failed],
                to=self._servers[self._current],
                reason=reason,
            )

    async def _send(
        self, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        last: httpx.HTTPError | None = None
        for _ in self._servers:
            index = self._current
            server = self._servers[index]
            try:
                with tracing.client_span(method, path, headers):
                    response = await self._client.request(
                        method, f"{server}{path}", headers=headers, **kwargs
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Not sent: safe to send to the next address, whatever the request.
                self._fail_over(index, type(exc).__name__)
                last = exc
                continue
            except httpx.HTTPError as exc:
                self._fail_over(index, type(exc).__name__)
                raise ServerError(f"cannot reach {server}: {exc}", status=0) from None
            if response.status_code >= 500:
                self._fail_over(index, str(response.status_code))
            return response
        raise ServerError(f"cannot reach {', '.join(self._servers)}: {last}", status=0) from None

    async def _call(
        self, method: str, path: str, identity: NodeIdentity | None = None, **kwargs: Any
    ) -> Any:
        headers: dict[str, str] = {}
        if identity is not None:
            # A key held by a device (the TPM) signs in a round trip to it: off the loop.
            credential = (
                await asyncio.to_thread(self.credential, identity)
                if isinstance(identity.key, HeldEcKey)
                else self.credential(identity)
            )
            headers["Authorization"] = f"Bearer {credential}"
        response = await self._send(method, path, headers, **kwargs)
        if response.is_error:
            problem = ""
            try:
                body = response.json()
                detail = body.get("detail", response.text[:200])
                problem = str(body.get("type", ""))
            except (ValueError, AttributeError):
                detail = response.text[:200]
            raise ServerError(
                f"{response.status_code}: {detail}", status=response.status_code, problem=problem
            )
        return response.json() if response.content else None

    def credential(self, identity: NodeIdentity) -> str:
        """A short-lived JWT signed with the node SVID key, reused for half its life."""
        now = self._clock.now()
        cached = self._credential
        if cached is not None and cached[1] == identity.serial and cached[0] > now.timestamp():
            return cached[2]
        issued_at = int(now.timestamp())
        token = jwt.encode(
            {
                "sub": str(identity.spiffe_id),
                "aud": self.server_id,
                "iat": issued_at,
                "exp": issued_at + int(CREDENTIAL_LIFETIME.total_seconds()),
            },
            jose_private_key(identity.key),
            algorithm=jws_algorithm(identity.key),
            headers={"kid": identity.serial, "typ": NODE_CREDENTIAL_TYPE},
        )
        reuse_until = issued_at + CREDENTIAL_LIFETIME.total_seconds() / 2
        self._credential = (reuse_until, identity.serial, token)
        return token

    async def attest(
        self, attestor: str, evidence: dict[str, Any], key: PrivateKey
    ) -> tuple[NodeIdentity, TrustBundle]:
        """Raises:
        ServerError: attestation refused (the detail says why) or server unreachable.
        """
        body = await self._call(
            "POST",
            "/v1/attest",
            json={"attestor": attestor, "evidence": evidence, "csr": create_csr(key)},
        )
        return _identity(body["svid"], key), bundle_from_jwks(body["bundle"])

    async def challenge(self, attestor: str, evidence: dict[str, Any]) -> dict[str, Any]:
        """The first step of a challenge-response attestor: the server's challenge (and, for
        tpm, the credential it protected for the node's TPM).

        Raises:
            ServerError: the evidence was refused or the server is unreachable.
        """
        body = await self._call(
            "POST", "/v1/attest/challenge", json={"attestor": attestor, "evidence": evidence}
        )
        return dict(body)

    async def renew(self, identity: NodeIdentity, key: PrivateKey) -> NodeIdentity:
        body = await self._call("POST", "/v1/agents/renew", identity, json={"csr": create_csr(key)})
        return _identity(body, key)

    async def sync(
        self,
        identity: NodeIdentity,
        since: int,
        revoked_since: int | None,
        wait: float,
        verdict_since: int | None = None,
    ) -> dict[str, Any]:
        """Long-poll; `revoked_since` is None until the agent knows where the revocation
        feed stands; `verdict_since` is None when the agent enforces nothing. `since` and
        `verdict_since` are the revisions the agent applied: trustd records them as its
        acknowledgement."""
        params: dict[str, Any] = {"since": since, "wait": wait}
        if revoked_since is not None:
            params["revoked_since"] = revoked_since
        if verdict_since is not None:
            params["verdict_since"] = verdict_since
        result: dict[str, Any] = await self._call("GET", "/v1/agents/sync", identity, params=params)
        return result

    async def report_addresses(
        self, identity: NodeIdentity, addresses: Mapping[str, Iterable[str]]
    ) -> None:
        """Replace the node's address report with `addresses` (SPIFFE ID -> addresses)."""
        await self._call(
            "PUT",
            "/v1/agents/addresses",
            identity,
            json={
                "identities": [
                    {"spiffe_id": spiffe_id, "addresses": sorted(found)}
                    for spiffe_id, found in sorted(addresses.items())
                ]
            },
        )

    async def report_flows(self, identity: NodeIdentity, batch: FlowBatch) -> FlowBatchResult:
        """Send one batch of aggregated flows (`POST /v1/agents/flows`).

        Raises:
            ServerError: refused (the status says why) or trustd unreachable.
        """
        body = await self._call(
            "POST", "/v1/agents/flows", identity, json=batch.model_dump(mode="json")
        )
        return FlowBatchResult.model_validate(body)

    async def sign(self, identity: NodeIdentity, csrs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST",
            "/v1/agents/svids",
            identity,
            json={"csrs": [{"entry_id": e, "csr": c} for e, c in csrs]},
        )
        return result

    async def jwt(self, identity: NodeIdentity, entry_id: str, audience: Sequence[str]) -> Any:
        return await self._call(
            "POST", "/v1/agents/jwt", identity, json={"entry_id": entry_id, "audience": audience}
        )

    async def wit(self, identity: NodeIdentity, entry_id: str, jwk: Mapping[str, Any]) -> Any:
        """A WIT-SVID for the entry, bound to the public key `jwk` (experimental)."""
        return await self._call(
            "POST", "/v1/agents/wit", identity, json={"entry_id": entry_id, "jwk": dict(jwk)}
        )


def _identity(svid: dict[str, Any], key: PrivateKey) -> NodeIdentity:
    chain = tuple(
        load_pem_certificates((svid["certificate"] + "".join(svid["intermediates"])).encode())
    )
    return NodeIdentity(SpiffeId.parse(svid["spiffe_id"]), chain, key)


def bundle_from_jwks(document: dict[str, Any]) -> TrustBundle:
    return TrustBundle.from_jwks(document, _trust_domain_of(_roots_of(document)))
