"""The agent's verdict table: bad updates change nothing; and the HTTP ext_authz endpoint
answering from it over a real socket."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import grpc
import pytest
from cryptography import x509
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc

from pki.bundle import TrustBundle
from pki.ca import (
    Authority,
    certificate_pem,
    create_intermediate,
    create_root,
    load_pem_certificates,
    serial_hex,
)
from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid
from tests.unit.pki_helpers import raw_leaf
from trustd.agent.enforcement.state import PolicyKey, VerdictTable
from trustd.agent.errors import InvalidVerdicts
from trustd.agent.extauthz import Authorizer, start_extauthz
from trustd.agent.extauthz_grpc import start_extauthz_grpc
from trustd.domain.verdicts import VerdictDelta

WEB, API = "spiffe://example.org/ns/web/a", "spiffe://example.org/ns/api/b"
MESH = (Path(__file__).parents[2] / "rego" / "mesh.rego").read_text()
FULL: dict[str, Any] = {
    "revision": 3,
    "base": 0,
    "changes": {
        "identities": {"set": {WEB: 256, API: 257}},
        "ipcache": {"set": {"10.213.0.1/32": 256, "10.213.0.2/32": 257}},
        "policy": {"set": [[257, 256, 8443, 6, True]]},
        "revoked": {"set": []},
    },
    "l7": {
        "revision": 1,
        "modules": {"mesh.rego": MESH},
        "data": {
            "mesh": {
                "allow": [{"name": "r", "source": WEB, "destination": API, "methods": ["GET"]}],
                "deny": [],
            }
        },
    },
}


def test_full_then_delta() -> None:
    table = VerdictTable().applied(FULL)
    assert table.allows(257, 256, 8443, 6)
    assert not table.allows(257, 256, 22, 6)
    delta = {
        "revision": 4,
        "base": 3,
        "changes": {"revoked": {"set": [256], "remove": []}},
    }
    after = table.applied(delta)
    assert not after.allows(257, 256, 8443, 6)
    assert table.policy == {PolicyKey(257, 256, 8443, 6): True}
    # Keys removed and set in one delta; the typed model is taken as it is.
    again = after.applied(
        VerdictDelta.model_validate(
            {
                "revision": 5,
                "base": 4,
                "changes": {
                    "policy": {"set": [[257, 256, 0, 17, True]], "remove": [[257, 256, 8443, 6]]},
                    "revoked": {"remove": [256]},
                    "ipcache": {"remove": ["10.213.0.1/32"]},
                },
            }
        )
    )
    assert again.policy == {PolicyKey(257, 256, 0, 17): True}
    assert again.allows(257, 256, 53, 17) and not again.allows(257, 256, 8443, 6)
    assert again.ipcache == {"10.213.0.2/32": 257} and again.revision == 5
    # An identity still named by the policy cannot go.
    with pytest.raises(InvalidVerdicts, match="unknown identity 256"):
        again.applied({"revision": 6, "base": 5, "changes": {"identities": {"remove": [WEB]}}})


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"revision": 5, "base": 2, "changes": {}}, "revision gap"),
        ({"revision": 3, "base": 3, "changes": {}}, "does not follow"),
        (
            {"revision": 4, "base": 3, "changes": {"policy": {"set": [[9, 256, 1, 6, True]]}}},
            "unknown",
        ),
        ({"revision": 4, "base": 3, "changes": {"ipcache": {"set": {"x": 256}}}}, "IPv4"),
        ({"revision": 4, "base": 3, "changes": {"ipcache": {"set": {"10.0.0.1/8": 256}}}}, "IPv4"),
        ({"revision": 4, "base": 3, "changes": {"policy": {"set": [[257, 256]]}}}, "policy.set"),
        ({"revision": 4, "base": 3, "changes": {"policy": {"set": [[257, 256, 1, 6, 1]]}}}, "bool"),
        ({"revision": 4, "base": 3, "changes": {"policy": {"set": [[257, 256, 1, 9, True]]}}}, "9"),
        ({"revision": 4, "base": 3, "changes": {"revoked": {"set": ["256"]}}}, "integer"),
        ({"revision": 4, "base": 3, "changes": {"nope": {}}}, "nope: Extra inputs"),
        ({"revision": 4}, "base: Field required"),
    ],
)
def test_bad_updates_change_nothing(update: dict[str, Any], message: str) -> None:
    table = VerdictTable().applied(FULL)
    with pytest.raises(InvalidVerdicts, match=message):
        table.applied(update)
    assert table.revision == 3 and table.allows(257, 256, 8443, 6)


TD = TrustDomain.parse("example.org")
CLOCK = SystemClock()


def _ca(td: TrustDomain = TD) -> tuple[Authority, x509.Certificate]:
    root_key = generate_private_key(KeyType.EC_P256)
    root = create_root(td, root_key, CLOCK, timedelta(days=1))
    key = generate_private_key(KeyType.EC_P256)
    inter = create_intermediate(
        td, key, Authority(root, root_key, (), root), CLOCK, timedelta(hours=2)
    )
    return Authority(inter, key, (), root), root


def _chain_pem(authority: Authority, spiffe_id: str) -> str:
    """An SVID chain (leaf, intermediate) escaped as nginx's `$ssl_client_escaped_cert`."""
    leaf_key = generate_private_key(KeyType.EC_P256)
    params = X509SvidParams(SpiffeId.parse(spiffe_id), leaf_key.public_key(), timedelta(hours=1))
    leaf = issue_x509_svid(authority, params, CLOCK)
    return quote(certificate_pem(leaf) + certificate_pem(authority.certificate))


def _authorizer(holder: dict[str, Any], bundle: TrustBundle | None = None) -> Authorizer:
    return Authorizer(lambda: holder["table"], lambda: bundle, CLOCK)


async def _check(port: int, headers: dict[str, str], method: str = "GET") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} /v1/x HTTP/1.1", "Host: a", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def test_http_ext_authz_answers_from_the_table() -> None:
    authority, root = _ca()
    bundle = TrustBundle(TD, (root,), {}, 1, 300)
    holder = {"table": VerdictTable().applied(FULL)}
    web, api = _chain_pem(authority, WEB), _chain_pem(authority, API)
    # Envoy with `set_current_client_cert_details: {cert: true, uri: true}`.
    xfcc = f'By={API};Hash=ab;Cert="{web}";Subject="CN=a,O=b";URI={WEB}'

    async def run() -> list[int]:
        server = await start_extauthz("127.0.0.1", 0, _authorizer(holder, bundle))
        port = server.sockets[0].getsockname()[1]
        try:
            results = [
                await _check(port, {"x-forwarded-client-cert": xfcc}),
                await _check(port, {"x-forwarded-client-cert": xfcc}, "DELETE"),
                await _check(port, {}),
                await _check(port, {"x-forwarded-client-cert": f"By={WEB};Cert={api}"}),
                # A bare URI= is the proxy's word only: refused.
                await _check(port, {"x-forwarded-client-cert": f"By={API};URI={WEB}"}),
                # The URI the proxy names must be the certificate's.
                await _check(port, {"x-forwarded-client-cert": f"By={API};Cert={api};URI={WEB}"}),
                # Two hops: the proxy did not sanitise the header.
                await _check(port, {"x-forwarded-client-cert": f"{xfcc},By={API};Cert={web}"}),
                await _check(port, {"x-forwarded-client-cert": 'By="unterminated'}),
            ]
            holder["table"] = holder["table"].applied(
                {"revision": 4, "base": 3, "changes": {"revoked": {"set": [256]}}}
            )
            results.append(await _check(port, {"x-forwarded-client-cert": xfcc}))
            return results
        finally:
            server.close()

    assert asyncio.run(run()) == [200, 403, 403, 403, 403, 403, 403, 403, 403]


def test_http_ext_authz_verifies_the_client_chain_against_the_bundle() -> None:
    authority, root = _ca()
    foreign, _ = _ca()
    bundle = TrustBundle(TD, (root,), {}, 1, 300)
    holder = {"table": VerdictTable().applied(FULL)}
    to_api = {"x-trustd-destination": API, "x-trustd-port": "8443"}

    async def run() -> list[int]:
        server = await start_extauthz("127.0.0.1", 0, _authorizer(holder, bundle))
        port = server.sockets[0].getsockname()[1]
        try:
            return [
                await _check(port, {"x-client-cert": _chain_pem(authority, WEB), **to_api}),
                # Same SPIFFE ID, issued by a CA the agent's bundle does not hold.
                await _check(port, {"x-client-cert": _chain_pem(foreign, WEB), **to_api}),
                await _check(port, {"x-client-cert": "not%20a%20cert", **to_api}),
                await _check(port, {"x-client-cert": _chain_pem(authority, API), **to_api}),
            ]
        finally:
            server.close()

    assert asyncio.run(run()) == [200, 403, 403, 403]


def _check_request(
    source: str, destination: str, method: str, certificate: str = ""
) -> pb.CheckRequest:
    request = pb.CheckRequest()
    attributes = request.attributes
    attributes.source.principal = source
    attributes.source.certificate = certificate
    attributes.destination.principal = destination
    attributes.destination.address.socket_address.port_value = 8443
    attributes.request.http.method = method
    attributes.request.http.path = "/v1/orders?page=2"
    return request


def test_grpc_check_answers_from_the_table() -> None:
    authority, root = _ca()
    bundle = TrustBundle(TD, (root,), {}, 1, 300)
    holder = {"table": VerdictTable().applied(FULL)}
    web, api = _chain_pem(authority, WEB), _chain_pem(authority, API)

    async def run() -> list[tuple[int, int]]:
        server, port = await start_extauthz_grpc("127.0.0.1", 0, _authorizer(holder, bundle))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = pb_grpc.AuthorizationStub(channel).Check
                cases = [
                    (WEB, API, "GET", web),
                    (WEB, API, "DELETE", web),
                    ("", API, "GET", web),
                    (API, WEB, "GET", api),
                    # No certificate: the principal alone is not believed.
                    (WEB, API, "GET", ""),
                    # The principal must be the certificate's.
                    (WEB, API, "GET", api),
                ]
                out = []
                for source, destination, method, certificate in cases:
                    request = _check_request(source, destination, method, certificate)
                    response = await check(request)
                    out.append((response.status.code, response.denied_response.status.code))
                return out
        finally:
            await server.stop(None)

    # google.rpc.Code OK = 0, PERMISSION_DENIED = 7; denied responses carry HTTP 403.
    assert asyncio.run(run()) == [(0, 0), (7, 403), (0, 0), (7, 403), (7, 403), (7, 403)]


def test_the_established_setting_is_held_until_a_delta_changes_it() -> None:
    full = VerdictTable().applied({"revision": 1, "base": 0, "cut_established": True})
    assert full.cut_established is True
    kept = full.applied({"revision": 2, "base": 1})
    assert kept.cut_established is True
    assert (
        kept.applied({"revision": 3, "base": 2, "cut_established": False}).cut_established is False
    )
    # A full state without it is the default: keep established connections.
    assert kept.applied({"revision": 4, "base": 0}).cut_established is False


def test_a_revoked_serial_is_refused_and_its_identity_is_not() -> None:
    authority, root = _ca()
    bundle = TrustBundle(TD, (root,), {}, 1, 300)
    table = VerdictTable().applied(FULL)
    revoked: set[str] = set()
    authorizer = Authorizer(lambda: table, lambda: bundle, CLOCK, revoked=lambda: revoked)
    first, second = _chain_pem(authority, WEB), _chain_pem(authority, WEB)
    assert authorizer.identify(first)[0] == WEB
    serial = serial_hex(load_pem_certificates(unquote(first).encode())[0])
    revoked.add(serial)
    # Refused even though the verified chain is cached; the other SVID of WEB passes.
    source, why = authorizer.identify(first)
    assert source is None and why == f"client certificate {serial} is revoked"
    assert authorizer.identify(second)[0] == WEB


def test_a_federated_caller_is_verified_against_its_own_domain_bundle() -> None:
    # Trust Domain and Bundle §3: the bundle of the trust domain the leaf claims, so B's CA
    # vouches for b.example only, and only when B's bundle is held (federation).
    authority, root = _ca()
    foreign_td = TrustDomain.parse("b.example")
    foreign, foreign_root = _ca(foreign_td)
    bundle = TrustBundle(TD, (root,), {}, 1, 300)
    held: dict[TrustDomain, TrustBundle] = {}
    authorizer = Authorizer(lambda: VerdictTable(), lambda: bundle, CLOCK, federated=lambda: held)
    client = _chain_pem(foreign, "spiffe://b.example/client")
    assert authorizer.identify(client) == (
        None,
        "client certificate rejected: no bundle of trust domain b.example is held",
    )
    held[foreign_td] = TrustBundle(foreign_td, (foreign_root,), {}, 1, 300)
    assert authorizer.identify(client) == ("spiffe://b.example/client", "")
    # B's CA claiming an ID of this domain: judged by this domain's bundle, and refused.
    leaf = raw_leaf(foreign.certificate, foreign.private_key, CLOCK, uris=[WEB])
    forged, why = authorizer.identify(
        quote(certificate_pem(leaf) + certificate_pem(foreign.certificate))
    )
    assert forged is None and "no certification path" in why, why
    assert authorizer.identify(_chain_pem(authority, WEB)) == (WEB, "")
    # The federation ends: the cached identity goes with the bundle.
    held.clear()
    assert authorizer.identify(client)[0] is None
