"""The Workload API server on a real Unix socket, called with real gRPC clients from this
process (SO_PEERCRED then names this test process; its uid selects the entries).

py-spiffe cannot be imported here: the spec's proto has no package, so its generated
module and trustd's register the same message names in protobuf's global pool. The
py-spiffe tests run it in separate processes (tests/integration/test_workload_api.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import grpc
import jwt.algorithms
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from pki.clock import FakeClock
from pki.errors import InvalidWit
from pki.jwt_svid import mint_jwt_svid, validate_jwt_svid
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId
from pki.wit_svid import validate_wit_svid
from tests.unit.pki_helpers import T0
from tests.workload_helpers import Domain, MintingWitSource, load_der_certificates
from trustd.agent.cache import QuarantineNotice, SvidCache, WorkloadEntry
from trustd.agent.errors import WorkloadAttestationError
from trustd.agent.proto import workload_pb2 as pb
from trustd.agent.proto import workload_pb2_grpc as pb_grpc
from trustd.agent.workload_api import WorkloadApiServer, start_workload_api

HEADER = (("workload.spiffe.io", "true"),)
ME = f"unix:uid:{os.getuid()}"


@dataclass
class Agent:
    domain: Domain
    cache: SvidCache
    server: WorkloadApiServer
    stub: pb_grpc.SpiffeWorkloadAPIStub
    wit: MintingWitSource | None = None

    def entry(self, entry_id: str) -> WorkloadEntry:
        return next(e for e in self.cache.entries() if e.id == entry_id)


@asynccontextmanager
async def agent(
    tmp_path: Path,
    *selectors: str,
    mint: bool = True,
    wit_source: bool = False,
    wit_bundle: bool = False,
) -> AsyncIterator[Agent]:
    domain = Domain(FakeClock(T0))
    cache = SvidCache()
    entries = [domain.entry("e-me", "/me", *selectors, hint="internal")] if selectors else []
    entries.append(domain.entry("e-other", "/other", "unix:uid:4242"))
    await cache.set_entries(entries)
    await cache.set_bundle(domain.bundle(wit=wit_bundle))
    if mint:
        for entry in entries:
            await cache.put_svid(domain.svid(entry))
    path = tmp_path / "agent" / "workload.sock"
    wit = domain.wit_source() if wit_source else None
    server = await start_workload_api(
        path, cache, domain.jwt_source(), clock=domain.clock, wit_source=wit
    )
    try:
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            yield Agent(domain, cache, server, pb_grpc.SpiffeWorkloadAPIStub(channel), wit)
    finally:
        await server.stop(None)


def run(
    tmp_path: Path,
    scenario: Callable[[Agent], Awaitable[None]],
    *selectors: str,
    mint: bool = True,
    wit_source: bool = False,
    wit_bundle: bool = False,
) -> None:
    async def main() -> None:
        async with agent(
            tmp_path, *selectors, mint=mint, wit_source=wit_source, wit_bundle=wit_bundle
        ) as a:
            await asyncio.wait_for(scenario(a), 20)

    asyncio.run(main())


async def refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def leaf(message: pb.X509SVIDResponse) -> x509.Certificate:
    return load_der_certificates(message.svids[0].x509_svid)[0]


def test_fetch_x509_svid_sends_full_state_and_pushes_changes(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        stream = a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        first = await stream.read()
        assert isinstance(first, pb.X509SVIDResponse)
        [svid] = first.svids
        assert (svid.spiffe_id, svid.hint) == ("spiffe://example.org/me", "internal")
        chain = load_der_certificates(svid.x509_svid)
        held = a.cache.svid("e-me")
        assert held is not None
        assert chain == list(held.chain)  # leaf first, then the intermediate
        # X509-SVID key: unencrypted PKCS#8 DER of the key the agent made.
        assert svid.x509_svid_key.startswith(b"\x30")
        assert b"".join(c.public_bytes(Encoding.DER) for c in [a.domain.ca.root]) == svid.bundle

        # Rotation is pushed without asking.
        rotated = a.domain.svid(a.entry("e-me"))
        await a.cache.put_svid(rotated)
        second = await stream.read()
        assert isinstance(second, pb.X509SVIDResponse)
        assert leaf(second) == rotated.chain[0] != chain[0]

        # A change for another workload pushes nothing: the next message is the next
        # change of ours, not a repeat.
        await a.cache.put_svid(a.domain.svid(a.entry("e-other")))
        again = a.domain.svid(a.entry("e-me"))
        await a.cache.put_svid(again)
        third = await stream.read()
        assert isinstance(third, pb.X509SVIDResponse)
        assert leaf(third) == again.chain[0]

        # The entry removed: the stream ends with PermissionDenied.
        await a.cache.set_entries([a.entry("e-other")])
        code, _ = await refused(stream.read())
        assert code == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario, ME)


def test_stream_waits_until_the_svid_is_minted(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        stream = a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        read = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.2)
        assert not read.done()
        svid = a.domain.svid(a.entry("e-me"))
        await a.cache.put_svid(svid)
        message = await read
        assert isinstance(message, pb.X509SVIDResponse)
        assert leaf(message) == svid.chain[0]
        stream.cancel()

    run(tmp_path, scenario, ME, mint=False)


def test_security_header_is_required(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        for metadata in [(), (("workload.spiffe.io", "false"),)]:
            calls: list[Awaitable[object]] = [
                a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=metadata).read(),
                a.stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=metadata).read(),
                a.stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=metadata).read(),
                a.stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=metadata),
                a.stub.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience="a", svid="x.y.z"), metadata=metadata
                ),
            ]
            for call in calls:
                code, details = await refused(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert "workload.spiffe.io" in details

    run(tmp_path, scenario, ME)


def test_caller_without_an_entry_gets_permission_denied_and_nothing_else(
    tmp_path: Path,
) -> None:
    async def scenario(a: Agent) -> None:
        token = (
            await a.domain.jwt_source().fetch_jwt_svid(a.entry("e-other").spiffe_id, ["a"])
        ).token
        calls: list[Awaitable[object]] = [
            a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER).read(),
            a.stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=HEADER).read(),
            a.stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER).read(),
            a.stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=HEADER),
            a.stub.ValidateJWTSVID(
                pb.ValidateJWTSVIDRequest(audience="a", svid=token), metadata=HEADER
            ),
        ]
        for call in calls:
            code, details = await refused(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "no identity issued" in details

    run(tmp_path, scenario)  # no entry for this process's uid


def test_jwt_svids_bundles_and_validation(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        response = await a.stub.FetchJWTSVID(
            pb.JWTSVIDRequest(audience=["db", "cache"]), metadata=HEADER
        )
        [svid] = response.svids
        assert (svid.spiffe_id, svid.hint) == ("spiffe://example.org/me", "internal")
        keys = a.domain.bundle().jwt_authorities
        checked = validate_jwt_svid(svid.svid, keys, "cache", a.domain.clock)
        assert str(checked.spiffe_id) == "spiffe://example.org/me"

        # Asking for an identity this workload does not hold.
        code, _ = await refused(
            a.stub.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["db"], spiffe_id="spiffe://example.org/other"),
                metadata=HEADER,
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await refused(a.stub.FetchJWTSVID(pb.JWTSVIDRequest(), metadata=HEADER))
        assert code == grpc.StatusCode.INVALID_ARGUMENT

        bundles = await a.stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER).read()
        assert isinstance(bundles, pb.JWTBundlesResponse)
        jwks = json.loads(bundles.bundles["spiffe://example.org"])
        assert [k["kid"] for k in jwks["keys"]] == [a.domain.kid]
        assert {k["use"] for k in jwks["keys"]} == {"jwt-svid"}
        # Trust Domain and Bundle §4.1.1/§4.1.2, as in the HTTP bundle.
        assert (jwks["spiffe_sequence"], jwks["spiffe_refresh_hint"]) == (1, 300)

        valid = await a.stub.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="db", svid=svid.svid), metadata=HEADER
        )
        assert valid.spiffe_id == "spiffe://example.org/me"
        assert list(valid.claims["aud"]) == ["db", "cache"]
        assert valid.claims["sub"] == "spiffe://example.org/me"

        # Wrong audience, garbage, and a token signed by a key outside the bundle.
        stranger = generate_private_key(KeyType.EC_P256)
        forged = mint_jwt_svid(
            stranger,
            a.domain.kid,
            a.entry("e-me").spiffe_id,
            ["db"],
            timedelta(minutes=5),
            a.domain.clock,
        ).token
        for audience, token in [("web", svid.svid), ("db", "not-a-jwt"), ("db", forged)]:
            code, details = await refused(
                a.stub.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=HEADER
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert token not in details  # never echo a bearer token

    run(tmp_path, scenario, ME)


def test_x509_bundles_stream_pushes_bundle_updates(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        stream = a.stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=HEADER)
        first = await stream.read()
        assert isinstance(first, pb.X509BundlesResponse)
        assert load_der_certificates(first.bundles["spiffe://example.org"]) == [a.domain.ca.root]
        # A new root published in the bundle (CA rotation) is pushed.
        other = Domain(a.domain.clock)
        bundle = a.domain.bundle(sequence=2)
        rotated = type(bundle)(
            trust_domain=bundle.trust_domain,
            x509_authorities=(a.domain.ca.root, other.ca.root),
            jwt_authorities=bundle.jwt_authorities,
            sequence=2,
            refresh_hint=300,
        )
        await a.cache.set_bundle(rotated)
        second = await stream.read()
        assert isinstance(second, pb.X509BundlesResponse)
        assert len(load_der_certificates(second.bundles["spiffe://example.org"])) == 2
        stream.cancel()

    run(tmp_path, scenario, ME)


def test_socket_permissions_and_no_way_around_the_relay(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        public = a.server.socket_path
        mode = public.stat().st_mode
        # World-connectable, like SPIRE's: attestation decides, not file permissions.
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o777
        assert stat.S_IMODE(a.server.private_dir.stat().st_mode) == 0o700
        # A client that reaches the gRPC server's private socket directly (only root can)
        # has no recorded credentials and is refused.
        async with grpc.aio.insecure_channel(f"unix:{a.server.relay.upstream_path}") as ch:
            stub = pb_grpc.SpiffeWorkloadAPIStub(ch)
            code, _ = await refused(
                stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=HEADER)
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED

    run(tmp_path, scenario, ME)


def test_start_replaces_a_stale_socket_and_refuses_other_files(tmp_path: Path) -> None:
    async def main() -> None:
        domain = Domain(FakeClock(T0))
        path = tmp_path / "workload.sock"
        first = await start_workload_api(path, SvidCache(), domain.jwt_source())
        private = first.private_dir
        await first.stop(None)
        assert not path.exists() and not private.exists()
        # A socket left behind by a crashed agent is replaced.
        with socket.socket(socket.AF_UNIX) as leftover:
            leftover.bind(str(path))
        second = await start_workload_api(path, SvidCache(), domain.jwt_source())
        await second.stop(None)
        path.write_text("not a socket")
        with pytest.raises(WorkloadAttestationError, match="not a socket"):
            await start_workload_api(path, SvidCache(), domain.jwt_source())
        # A directory too deep for a Unix socket path (unix(7)) is refused up front, with
        # what to do, and nothing is created there.
        deep = tmp_path / ("d" * 60) / ("e" * 40)
        with pytest.raises(OSError, match="choose a shorter --socket"):
            await start_workload_api(deep / "w.sock", SvidCache(), domain.jwt_source())
        assert not deep.exists()

    asyncio.run(main())
    # The refused start removed nothing of the operator's and left nothing behind.
    assert (tmp_path / "workload.sock").read_text() == "not a socket"
    assert [p.name for p in tmp_path.iterdir()] == ["workload.sock"]


def test_server_reflection_lists_the_workload_api(tmp_path: Path) -> None:
    # Workload Endpoint §7: reflection SHOULD be offered; no security header is needed.
    reflection_pb2 = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    reflection_grpc = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2_grpc")

    async def scenario(a: Agent) -> None:
        async with grpc.aio.insecure_channel(f"unix:{a.server.socket_path}") as channel:
            stub = reflection_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            services = set()
            async for answer in stub.ServerReflectionInfo(iter([request])):
                services |= {s.name for s in answer.list_services_response.service}
            assert "SpiffeWorkloadAPI" in services

            symbol = reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="X509SVIDRequest"
            )
            async for answer in stub.ServerReflectionInfo(iter([symbol])):
                assert answer.file_descriptor_response.file_descriptor_proto

    run(tmp_path, scenario, ME)


def test_a_quarantined_identity_is_refused_with_the_reason_until_its_end(
    tmp_path: Path,
) -> None:
    async def scenario(a: Agent) -> None:
        me = a.entry("e-me").spiffe_id
        stream = a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        assert isinstance(await stream.read(), pb.X509SVIDResponse)
        until = a.domain.clock.now() + timedelta(minutes=5)
        await a.cache.set_quarantines([QuarantineNotice(me, "incident 7", until)])
        # The open stream ends, the SVID is dropped, and every call is told why.
        code, details = await refused(stream.read())
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "quarantined" in details and "incident 7" in details
        assert a.cache.svid("e-me") is None
        # No SVID minted meanwhile is served either.
        await a.cache.put_svid(a.domain.svid(a.entry("e-me")))
        assert a.cache.svid("e-me") is None
        code, details = await refused(
            a.stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"]), metadata=HEADER)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED and "incident 7" in details
        # At `until`, by the agent's own clock, it ends: the identity is served again.
        a.domain.clock.advance(timedelta(minutes=5))
        assert [n.spiffe_id for n in await a.cache.lift_expired(a.domain.clock.now())] == [me]
        await a.cache.put_svid(a.domain.svid(a.entry("e-me")))
        again = await a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER).read()
        assert isinstance(again, pb.X509SVIDResponse)
        assert again.svids[0].spiffe_id == str(me)

    run(tmp_path, scenario, ME)


def test_federated_bundles_and_trust_domain_binding(tmp_path: Path) -> None:
    """The caller's entries federate with b.example: its bundle is in FetchX509SVID's
    federated_bundles, FetchX509Bundles and FetchJWTBundles, and pushed again when it
    changes. ValidateJWTSVID judges a token by the bundle of its subject's trust domain only
    (spiffe/spiffe#375): b.example's key vouches for b.example subjects, never for
    example.org ones; a domain the caller does not federate with is refused."""

    async def scenario(a: Agent) -> None:
        other = Domain(a.domain.clock, "b.example")
        stranger = Domain(a.domain.clock, "c.example")
        await a.cache.set_federated([other.bundle(), stranger.bundle()])
        me = replace(a.entry("e-me"), federates_with=(other.ca.trust_domain,))
        await a.cache.set_entries([me, a.entry("e-other")])
        await a.cache.put_svid(a.domain.svid(me))

        svids = a.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER)
        first = await svids.read()
        assert isinstance(first, pb.X509SVIDResponse)
        # c.example is held for another entry's sake only: not this caller's.
        assert list(first.federated_bundles) == ["spiffe://b.example"]
        assert load_der_certificates(first.federated_bundles["spiffe://b.example"]) == [
            other.ca.root
        ]
        x509_bundles = await a.stub.FetchX509Bundles(
            pb.X509BundlesRequest(), metadata=HEADER
        ).read()
        assert isinstance(x509_bundles, pb.X509BundlesResponse)
        assert sorted(x509_bundles.bundles) == ["spiffe://b.example", "spiffe://example.org"]
        jwt_bundles = await a.stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER).read()
        assert isinstance(jwt_bundles, pb.JWTBundlesResponse)
        federated_jwks = json.loads(jwt_bundles.bundles["spiffe://b.example"])
        assert [k["kid"] for k in federated_jwks["keys"]] == [other.kid]

        def token(domain: Domain, subject: str) -> str:
            return mint_jwt_svid(
                domain.jwt_key,
                domain.kid,
                SpiffeId.parse(subject),
                ["db"],
                timedelta(minutes=5),
                domain.clock,
            ).token

        valid = await a.stub.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="db", svid=token(other, "spiffe://b.example/c")),
            metadata=HEADER,
        )
        assert valid.spiffe_id == "spiffe://b.example/c"
        for forged, reason in [
            # B's key claiming an example.org subject: judged by example.org's bundle.
            (token(other, "spiffe://example.org/me"), "kid"),
            # A domain this caller does not federate with.
            (token(stranger, "spiffe://c.example/x"), "no bundle of trust domain c.example"),
        ]:
            code, details = await refused(
                a.stub.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience="db", svid=forged), metadata=HEADER
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert reason in details

        # A change of the federated bundle is pushed on the open stream.
        rotated = Domain(a.domain.clock, "b.example")
        await a.cache.set_federated(
            [
                type(other.bundle())(
                    trust_domain=other.ca.trust_domain,
                    x509_authorities=(other.ca.root, rotated.ca.root),
                    jwt_authorities={other.kid: other.jwt_key.public_key()},
                    sequence=2,
                    refresh_hint=300,
                ),
                stranger.bundle(),
            ]
        )
        second = await svids.read()
        assert isinstance(second, pb.X509SVIDResponse)
        assert len(load_der_certificates(second.federated_bundles["spiffe://b.example"])) == 2
        svids.cancel()

    run(tmp_path, scenario, ME)


# --------------------------------------------------------------- WIT-SVID profile


@pytest.mark.parametrize(
    ("wit_source", "wit_bundle"), [(False, False), (True, False), (False, True)]
)
def test_wit_svid_profile_is_unimplemented_unless_offered(
    tmp_path: Path, wit_source: bool, wit_bundle: bool
) -> None:
    async def scenario(a: Agent) -> None:
        # As for any method the endpoint does not serve: Unimplemented, header or not.
        for metadata in (HEADER, ()):
            stream = a.stub.FetchWITSVID(pb.WITSVIDRequest(), metadata=metadata)
            code, details = await refused(stream.read())
            assert code == grpc.StatusCode.UNIMPLEMENTED, details
        bundles = a.stub.FetchWITBundles(pb.WITBundlesRequest(), metadata=HEADER)
        code, _ = await refused(bundles.read())
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert a.wit is None or a.wit.minted == 0

    run(tmp_path, scenario, ME, wit_source=wit_source, wit_bundle=wit_bundle)


def test_fetch_wit_svid_gives_a_bound_token_and_its_key(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        stream = a.stub.FetchWITSVID(pb.WITSVIDRequest(), metadata=HEADER)
        first = await stream.read()
        assert isinstance(first, pb.WITSVIDResponse)
        [svid] = first.svids
        assert (svid.spiffe_id, svid.hint) == ("spiffe://example.org/me", "internal")
        key_jwk = json.loads(svid.wit_svid_key)
        assert key_jwk["alg"] == "ES256" and "d" in key_jwk
        private = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(key_jwk))
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        bundle = a.cache.bundle
        assert bundle is not None
        held = validate_wit_svid(
            svid.wit_svid,
            bundle.wit_authorities,
            a.domain.clock,
            bundle.trust_domain,
            presented_key=private.public_key(),
        )
        assert str(held.spiffe_id) == "spiffe://example.org/me"
        # The token is bound to the key handed out with it, and to no other.
        with pytest.raises(InvalidWit, match="another key"):
            validate_wit_svid(
                svid.wit_svid,
                bundle.wit_authorities,
                a.domain.clock,
                bundle.trust_domain,
                presented_key=generate_private_key(KeyType.EC_P256).public_key(),
            )
        # A new identity for the caller is pushed on the open stream.
        await a.cache.set_entries(
            [*a.cache.entries(), a.domain.entry("e-me-2", "/me-too", ME, hint="external")]
        )
        second = await stream.read()
        assert isinstance(second, pb.WITSVIDResponse)
        assert sorted(s.spiffe_id for s in second.svids) == [
            "spiffe://example.org/me",
            "spiffe://example.org/me-too",
        ]
        stream.cancel()

        bundles = a.stub.FetchWITBundles(pb.WITBundlesRequest(), metadata=HEADER)
        message = await bundles.read()
        assert isinstance(message, pb.WITBundlesResponse)
        assert not message.more
        jwks = json.loads(message.bundles["spiffe://example.org"])
        # WIT-SVID §6: only the wit-svid keys, with their own kid.
        assert [(k["use"], k["kid"]) for k in jwks["keys"]] == [("wit-svid", a.domain.wit_kid)]
        assert a.domain.wit_kid != a.domain.kid
        bundles.cancel()

    run(tmp_path, scenario, ME, wit_source=True, wit_bundle=True)


def test_fetch_wit_svid_checks_the_caller_like_every_call(tmp_path: Path) -> None:
    async def scenario(a: Agent) -> None:
        code, _ = await refused(a.stub.FetchWITSVID(pb.WITSVIDRequest()).read())
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, details = await refused(
            a.stub.FetchWITSVID(pb.WITSVIDRequest(), metadata=HEADER).read()
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert a.wit is not None and a.wit.minted == 0

    # This process matches no entry.
    run(tmp_path, scenario, wit_source=True, wit_bundle=True)
