"""The agent's HTTP ext_authz endpoint for proxies in front of local workloads: nginx
`auth_request` and Envoy's HTTP ext_authz filter. Answered from the pushed state (revoked
serials, quarantined identities) and the mesh policy evaluated by the agent's own engine:
no call to trustd.

Who calls: the proxy verified the client's X509-SVID (mutual TLS) and passes the
certificate on, either as `X-Client-Cert` (nginx `$ssl_client_escaped_cert`) or in Envoy's
`x-forwarded-client-cert` (`Cert=` or `Chain=`, with `set_current_client_cert_details`
`cert: true`; `By=` is the proxy's own SPIFFE ID). The destination is the proxy's workload
(`X-Trustd-Destination`, or XFCC `By=`), the port `X-Trustd-Port`; method and path are the
original request's (`X-Original-Method` / `X-Original-URI` from nginx, the check request's
own method and path from Envoy). 2xx allows, 403 denies (nginx auth_request and Envoy both
read it so).

The certificate is verified again against the trust bundle the agent holds (X509-SVID §5,
RFC 5280 §6.1) and the identity is taken from it, never from a bare `URI=`: the proxy
already checked it, but a header is only as trustworthy as whoever can reach this port, and
the check is cheap once cached. A caller of a federated trust domain is verified against
that domain's bundle (held because an entry of this node federates with it), chosen by the
SPIFFE ID the certificate claims, so no CA vouches for another domain's IDs; the mesh
policy then decides as for a local caller.

Every decision joins the agent's flows (trustd/agent/flows.py) with what it saw of the
request: method, path without its query, host and the status answered. The proxy may name
the connection's addresses, `X-Trustd-Source-Address` / `X-Trustd-Destination-Address`
(nginx `$remote_addr` / `$server_addr`); without them they are reported unspecified.

The server is a small HTTP/1.1 keep-alive loop on asyncio: a check is a header-only
request, and a framework's per-request cost would be most of the budget.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import structlog
from cryptography import x509

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates, serial_hex
from pki.clock import Clock
from pki.errors import InvalidBundle, InvalidSvid
from pki.spiffe_id import TrustDomain
from pki.x509_svid import verify_x509_svid_in_bundles
from policy.engine import EmbeddedEngine
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.flows import FlowReporter
from trustd.domain.flows import Reason, Verdict
from trustd.xfcc import MalformedXfcc, parse_xfcc

log = structlog.get_logger("trustd.agent.extauthz")
MESH_ALLOW = "data.trustd.mesh.allow"
MAX_HEADER_BYTES = 32768
CACHE_SIZE = 4096


class Authorizer:
    """Decisions from the verdict table the agent holds; one engine per L7 revision, used
    only on the event loop's thread (a regorus engine is bound to its thread)."""

    def __init__(
        self,
        table: Callable[[], VerdictTable],
        bundle: Callable[[], TrustBundle | None],
        clock: Clock,
        intermediates: Callable[[], Sequence[x509.Certificate]] = tuple,
        stale: Callable[[], bool] = lambda: False,
        revoked: Callable[[], Container[str]] = frozenset,
        flows: FlowReporter | None = None,
        federated: Callable[[], Mapping[TrustDomain, TrustBundle]] = dict,
    ) -> None:
        self._table = table
        self._flows = flows
        # The foreign trust domains' bundles the agent holds (federation).
        self._federated = federated
        # Revoked serials (hex): a revoked certificate is refused whatever its identity.
        self._revoked = revoked
        self._bundle = bundle
        # nginx passes the client's leaf only ($ssl_client_escaped_cert): the intermediates
        # the agent's own node SVID chains through fill in the path (RFC 5280 §6.1).
        self._intermediates = intermediates
        self._stale = stale
        self._clock = clock
        self._engine: tuple[int, EmbeddedEngine] | None = None
        self._decisions: OrderedDict[tuple[Any, ...], tuple[bool, str, Reason]] = OrderedDict()
        # Verified PEM -> (SPIFFE ID, not after, serial), valid for one bundle (by sequence).
        self._identities: OrderedDict[str, tuple[str, datetime, str]] = OrderedDict()
        self._identities_bundles: tuple[TrustBundle, ...] = ()

    def identify(self, pem_escaped: str, claimed: str | None = None) -> tuple[str | None, str]:
        """The SPIFFE ID of a URL-encoded PEM client chain (leaf first) that verifies
        against the agent's bundle, or None and why not; `claimed`, the ID the proxy says
        it saw, must match it."""
        bundle = self._bundle()
        if bundle is None:
            return None, "no trust bundle received from trustd yet"
        bundles = {**self._federated(), bundle.trust_domain: bundle}
        held = tuple(bundles.values())
        if len(held) != len(self._identities_bundles) or any(
            a is not b for a, b in zip(held, self._identities_bundles, strict=True)
        ):
            self._identities.clear()
            self._identities_bundles = held
        now = self._clock.now()
        found = self._identities.get(pem_escaped)
        if found is None or now >= found[1]:
            try:
                chain = load_pem_certificates(unquote(pem_escaped).encode())
                pool = [*chain[1:], *self._intermediates()]
                # Trust Domain and Bundle §3: the bundle of the domain the leaf claims.
                spiffe_id = verify_x509_svid_in_bundles(
                    chain[0],
                    pool,
                    {domain: b.x509_authorities for domain, b in bundles.items()},
                    self._clock,
                )
            except (InvalidBundle, InvalidSvid) as exc:
                return None, f"client certificate rejected: {exc.detail}"
            found = self._identities[pem_escaped] = (
                str(spiffe_id),
                chain[0].not_valid_after_utc,
                serial_hex(chain[0]),
            )
            if len(self._identities) > CACHE_SIZE:
                self._identities.popitem(last=False)
        # RFC 5280 §3.3: a revoked certificate is no longer valid, though its identity may
        # hold another that is (the agent replaced the SVID; the serial is what is refused).
        if found[2] in self._revoked():
            return None, f"client certificate {found[2]} is revoked"
        if claimed and claimed != found[0]:
            return None, f"the proxy names {claimed} but the certificate is {found[0]}"
        return found[0], ""

    def _forwarded(self, header: str) -> tuple[str | None, str | None, str]:
        """(source, `By=` destination, why not) from an `x-forwarded-client-cert` header."""
        try:
            elements = parse_xfcc(header)
        except MalformedXfcc as exc:
            return None, None, str(exc)
        # One hop only: the proxy in front of the workload must sanitise the header
        # (Envoy `forward_client_cert_details: SANITIZE_SET`).
        if len(elements) != 1:
            return None, None, "x-forwarded-client-cert must hold exactly one element"
        element = elements[0]
        pem = element.get("chain") or element.get("cert")
        if not pem:
            return None, None, "x-forwarded-client-cert carries no Cert= (Envoy: cert: true)"
        source, why = self.identify(pem, element.get("uri"))
        return source, element.get("by"), why

    def _mesh(self, table: VerdictTable) -> EmbeddedEngine | None:
        if table.l7 is None:
            return None
        revision = int(table.l7.get("revision", 0))
        if self._engine is None or self._engine[0] != revision:
            self._engine = (revision, EmbeddedEngine(table.l7["modules"], table.l7["data"]))
            self._decisions.clear()
        return self._engine[1]

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[bool, str]:
        """Whether the original request (HTTP ext_authz: headers lower-cased) may pass,
        and why."""
        by: str | None = None
        if "x-client-cert" in headers:
            source, why = self.identify(headers["x-client-cert"])
        elif "x-forwarded-client-cert" in headers:
            source, by, why = self._forwarded(headers["x-forwarded-client-cert"])
        else:
            source, why = None, "no client certificate (X-Client-Cert or XFCC Cert=)"
        destination = headers.get("x-trustd-destination") or by
        method = headers.get("x-original-method", method)
        path = headers.get("x-original-uri", path)
        seen = {
            "source_address": headers.get("x-trustd-source-address", ""),
            "destination_address": headers.get("x-trustd-destination-address", ""),
            "host": headers.get("x-original-host", headers.get("host", "")),
        }
        port_text = headers.get("x-trustd-port", "0")
        port = int(port_text) if port_text.isdigit() and int(port_text) < 65536 else None
        if not source:
            # A revoked certificate is a revoked client; any other failure is no identity.
            reason = Reason.REVOKED if why.endswith("is revoked") else Reason.POLICY
            self.record(None, destination, port or 0, method, path, False, reason, **seen)
            return False, why
        if not destination:
            return False, "the proxy names no destination (X-Trustd-Destination)"
        if port is None:
            return False, "X-Trustd-Port is not a number"
        return self.decide(source, destination, port, method, path, **seen)

    def decide(
        self,
        source: str,
        destination: str,
        port: int,
        method: str,
        path: str,
        *,
        source_address: str = "",
        destination_address: str = "",
        host: str = "",
    ) -> tuple[bool, str]:
        """The mesh decision for a verified source calling `destination` (HTTP and gRPC
        ext_authz share it), recorded in the flows: quarantined identities first, then the
        mesh policy; default deny."""
        method, path = method.upper(), path.split("?", 1)[0]
        allowed, why, reason = self._decide(source, destination, port, method, path)
        self.record(
            source,
            destination,
            port,
            method,
            path,
            allowed,
            reason,
            source_address=source_address,
            destination_address=destination_address,
            host=host,
        )
        return allowed, why

    def record(
        self,
        source: str | None,
        destination: str | None,
        port: int,
        method: str,
        path: str,
        allowed: bool,
        reason: Reason,
        *,
        source_address: str,
        destination_address: str,
        host: str,
    ) -> None:
        """Add a decision to the flows (`source` None: the client was not identified)."""
        if self._flows is None:
            return
        self._flows.record_l7(
            source,
            destination,
            source_address,
            destination_address,
            port,
            Verdict.ALLOWED if allowed else Verdict.DENIED,
            reason,
            # The query is left out: it may carry credentials (RFC 3986 §3.4).
            (method.upper(), path.split("?", 1)[0], host, 200 if allowed else 403),
        )

    def _decide(
        self, source: str, destination: str, port: int, method: str, path: str
    ) -> tuple[bool, str, Reason]:
        if self._stale():
            return False, "no word from trustd for longer than the staleness limit", Reason.STALE
        table = self._table()
        number = table.identities.get(source)
        if number is not None and number in table.revoked:
            return False, f"{source} is quarantined", Reason.REVOKED
        engine = self._mesh(table)
        if engine is None:
            return False, "no policy received from trustd yet", Reason.POLICY
        key = (source, destination, port, method, path)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        try:
            allowed = engine.evaluate(
                MESH_ALLOW,
                {
                    "source": source,
                    "destination": destination,
                    "port": port,
                    "protocol": "http",
                    "method": method,
                    "path": path,
                },
            )
        except Exception as exc:
            log.error("extauthz_evaluation_failed", error=str(exc))
            return False, "policy evaluation failed", Reason.POLICY
        decision = (
            allowed is True,
            "allowed" if allowed is True else "denied by policy",
            Reason.POLICY,
        )
        self._decisions[key] = decision
        if len(self._decisions) > CACHE_SIZE:
            self._decisions.popitem(last=False)
        return decision


class _Protocol(asyncio.Protocol):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    self._reply(431, "request headers too large", close=True)
                return
            head, rest = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self._reply(400, "malformed request line", close=True)
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._reply(400, "bad content-length", close=True)
                return
            if len(rest) < length:
                return
            self._buffer = rest[length:]
            allowed, reason = self._authorizer.check(parts[0], parts[1], headers)
            close = headers.get("connection", "").lower() == "close"
            self._reply(200 if allowed else 403, reason, close=close)
            if close:
                return

    def _reply(self, status: int, reason: str, *, close: bool) -> None:
        assert self._transport is not None
        body = json.dumps({"allowed": status == 200, "reason": reason}).encode()
        text = {200: "OK", 400: "Bad Request", 403: "Forbidden", 431: "Too Large"}[status]
        lines = [
            f"HTTP/1.1 {status} {text}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(["Connection: close"] if close else []),
        ]
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if close:
            self._transport.close()


async def start_extauthz(host: str, port: int, authorizer: Authorizer) -> asyncio.Server:
    """Listen for ext_authz checks on `host:port` (keep it on loopback or the node)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(authorizer), host, port)
    log.info("extauthz_listening", address=f"{host}:{port}")
    return server
