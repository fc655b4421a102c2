"""The SPIFFE Workload API (gRPC over a Unix socket) over the agent's SVID cache.

Implements the spec's ``workloadapi.proto`` unchanged (``/SpiffeWorkloadAPI/...``):
FetchX509SVID, FetchX509Bundles and FetchJWTBundles stream the caller's full state and push
it again whenever it changes; FetchJWTSVID and ValidateJWTSVID are unary. With the
experimental WIT-SVID profile (the SPIFFE draft's ``workloadapiwitsvid.proto`` additions),
FetchWITSVID and FetchWITBundles stream too, when the agent has a WIT-SVID source and the
trust domain's bundle holds ``wit-svid`` keys; otherwise they answer Unimplemented.

Every call must carry the ``workload.spiffe.io: true`` metadata (SPIFFE Workload Endpoint
§4, InvalidArgument otherwise), is attested from the caller's process (see
``workload_attestor``) and is refused with PermissionDenied, and nothing else, when the
caller matches no registration entry or only entries of quarantined identities (the reason
is in the status message). A caller that matches entries is noted (process and
SPIFFE IDs) for the addresses the agent reports (see ``addresses``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import structlog
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from pki.bundle import USE_JWT_SVID, USE_WIT_SVID, TrustBundle
from pki.clock import Clock, SystemClock
from pki.errors import InvalidJwt, InvalidSpiffeId, TrustdError
from pki.jose import MAX_TOKEN_BYTES
from pki.jwt_svid import validate_jwt_svid, validated_claims
from pki.keys import private_key_der_pkcs8
from pki.selectors import Selector
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.wit_svid import workload_private_jwk
from trustd.agent.addresses import WorkloadAddresses
from trustd.agent.cache import (
    HeldWitSvid,
    JwtSvidSource,
    SvidCache,
    WitSvidSource,
    WorkloadEntry,
    X509Svid,
)
from trustd.agent.errors import Unimplemented, WorkloadAttestationError
from trustd.agent.peer_relay import DEFAULT_MAX_CONNECTIONS, PeerRelay
from trustd.agent.proto import workload_pb2 as pb
from trustd.agent.proto import workload_pb2_grpc as pb_grpc
from trustd.agent.workload_attestor import PeerCredentials, UnixWorkloadAttestor, WorkloadProcess
from trustd.errors import InvalidRequest, NotReady, PermissionDenied

log = structlog.get_logger("trustd.agent")

SECURITY_HEADER = "workload.spiffe.io"
_DER = serialization.Encoding.DER
M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[Message, Message]

# The one place agent errors become gRPC status codes. Anything else a TrustdError
# signals (the server is unreachable, the bundle is not there yet) is Unavailable: the
# client retries.
_STATUS: dict[type[TrustdError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidJwt: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidSpiffeId: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    WorkloadAttestationError: grpc.StatusCode.PERMISSION_DENIED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def _status(exc: TrustdError) -> grpc.StatusCode:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.UNAVAILABLE


async def _answer(context: Context, call: Awaitable[M]) -> M:
    """A unary call's response, or its error as the matching status."""
    try:
        return await call
    except TrustdError as exc:
        await context.abort(_status(exc), exc.detail)


class Attestor(Protocol):
    def attest(self, process: WorkloadProcess) -> frozenset[Selector]:
        """The caller's selectors (blocking; called on a worker thread).

        Raises:
            WorkloadAttestationError: the caller cannot be attested.
        """
        ...


def _no_identity() -> PermissionDenied:
    # Workload API spec: a caller entitled to no SVID gets PermissionDenied.
    return PermissionDenied("no identity issued: this workload matches no registration entry")


class _Encoded:
    """Wire encodings of the cache's current SVIDs and bundle, made once per object rather
    than once per call (every fetch would otherwise re-serialise keys and certificates)."""

    def __init__(self, cache: SvidCache) -> None:
        self._cache = cache
        self._generation = cache.generation
        self._svids: dict[str, tuple[X509Svid, bytes, pb.X509SVID]] = {}
        self._bundle: tuple[TrustBundle, bytes] | None = None

    def _prune(self) -> None:
        # Forget encodings (private keys among them) the cache no longer holds.
        if self._cache.generation != self._generation:
            self._generation = self._cache.generation
            for entry_id, held in list(self._svids.items()):
                if self._cache.svid(entry_id) is not held[0]:
                    del self._svids[entry_id]

    def bundle_der(self, bundle: TrustBundle) -> bytes:
        if self._bundle is None or self._bundle[0] is not bundle:
            # The proto's bundle fields are concatenated ASN.1 DER certificates.
            der = b"".join(cert.public_bytes(_DER) for cert in bundle.x509_authorities)
            self._bundle = (bundle, der)
        return self._bundle[1]

    def svid(self, svid: X509Svid, bundle_der: bytes) -> pb.X509SVID:
        self._prune()
        held = self._svids.get(svid.entry_id)
        if held is None or held[0] is not svid or held[1] is not bundle_der:
            message = pb.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                # Leaf first, then intermediates, as concatenated DER.
                x509_svid=b"".join(c.public_bytes(_DER) for c in svid.chain),
                # Unencrypted PKCS#8 DER, as the proto requires.
                x509_svid_key=private_key_der_pkcs8(svid.private_key),
                bundle=bundle_der,
                hint=svid.hint,
            )
            self._svids[svid.entry_id] = held = (svid, bundle_der, message)
        return held[2]


def _offer_reflection(server: grpc.aio.Server) -> None:
    """Workload Endpoint §7: the endpoint SHOULD offer gRPC server reflection, so generic
    tools (grpcurl, grpc_cli) can list and call the Workload API without its proto."""
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:  # an install without grpcio-reflection still serves the API
        log.warning("workload_api.reflection_unavailable", missing="grpcio-reflection")
        return
    service = pb.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"].full_name
    reflection.enable_server_reflection((service, reflection.SERVICE_NAME), server)


def _jwks_of(bundle: TrustBundle, use: str) -> str:
    # JWT (WIT) bundles are SPIFFE bundles of the JWT-SVID (WIT-SVID) keys only; JWT-SVID
    # §6.1 and WIT-SVID §6.1 put a kid on each. Trust Domain and Bundle §4.1.1/§4.1.2:
    # spiffe_sequence and spiffe_refresh_hint SHOULD be set, as in the bundle served over
    # HTTP.
    document = bundle.to_jwks()
    document["keys"] = [k for k in document["keys"] if k.get("use") == use]
    return json.dumps(document, separators=(",", ":"))


def _jwt_jwks(bundle: TrustBundle) -> bytes:
    return _jwks_of(bundle, USE_JWT_SVID).encode()


def _wit_unimplemented() -> Unimplemented:
    return Unimplemented(
        "this Workload API does not offer WIT-SVIDs: the trust domain's bundle has no "
        "wit-svid key (WIT-SVID §6.2; the server runs without TRUSTD_WIT_SVID)"
    )


@dataclass(frozen=True)
class _Caller:
    """An attested caller: its selectors, and which process it is (for its addresses)."""

    selectors: frozenset[Selector]
    credentials: PeerCredentials
    start_time: int


class WorkloadApi(pb_grpc.SpiffeWorkloadAPIServicer):
    """The servicer. Runs on the agent's event loop, next to the cache's writers."""

    def __init__(
        self,
        cache: SvidCache,
        jwt_source: JwtSvidSource,
        attestor: Attestor,
        relay: PeerRelay,
        clock: Clock,
        addresses: WorkloadAddresses | None = None,
        wit_source: WitSvidSource | None = None,
    ) -> None:
        self._addresses = addresses
        self._wit_source = wit_source
        self._cache = cache
        self._jwt_source = jwt_source
        self._attestor = attestor
        self._relay = relay
        self._clock = clock
        self._encoded = _Encoded(cache)
        self._matched: dict[frozenset[Selector], list[WorkloadEntry]] = {}
        self._matched_generation = cache.generation

    async def _attest(self, context: Context) -> _Caller:
        metadata = context.invocation_metadata() or ()
        if not any(key == SECURITY_HEADER and value == "true" for key, value in metadata):
            raise InvalidRequest(f"security header missing from request: {SECURITY_HEADER}")
        process = self._relay.lookup(context.peer())
        if process is None:
            raise PermissionDenied("caller did not connect through the Workload API socket")
        # The connection may close (and its descriptor be reused) while the attestor runs
        # on another thread: it works on its own duplicate.
        handle = process.duplicate()
        try:
            selectors = await asyncio.to_thread(self._attestor.attest, handle)
        finally:
            handle.close()
        return _Caller(selectors, handle.credentials, handle.start_time)

    def _entries(self, caller: _Caller) -> list[WorkloadEntry]:
        # Matching scans every entry of the node; a workload calls with the same selectors
        # each time, so the match is kept until the cache changes.
        if self._matched_generation != self._cache.generation or len(self._matched) > 1024:
            self._matched.clear()
            self._matched_generation = self._cache.generation
        entries = self._matched.get(caller.selectors)
        if entries is None:
            entries = self._matched[caller.selectors] = self._cache.entries_for(caller.selectors)
        if self._addresses is not None:
            self._addresses.observe(
                caller.credentials, caller.start_time, (e.spiffe_id for e in entries)
            )
        if not entries:
            raise _no_identity()
        # A quarantined identity is served nothing: with no other identity left, the
        # caller is told why (Workload API spec: PermissionDenied for a caller entitled to
        # no SVID).
        now = self._clock.now()
        held = [(e, self._cache.quarantine_of(e.spiffe_id, now)) for e in entries]
        served = [e for e, quarantine in held if quarantine is None]
        if not served:
            refusal = next(q for _, q in held if q is not None).refusal
            raise PermissionDenied(refusal)
        return served

    async def _watch(
        self,
        context: Context,
        build: Callable[[list[WorkloadEntry]], tuple[Hashable, M] | None],
    ) -> AsyncIterator[M]:
        """Yield `build`'s message now and again whenever what it describes changes."""
        caller = await self._attest(context)
        last: Hashable = None
        while True:
            generation = self._cache.generation
            built = build(self._entries(caller))
            if built is not None and built[0] != last:
                last = built[0]
                yield built[1]
            await self._cache.wait_changed(generation)

    async def _stream(
        self,
        context: Context,
        build: Callable[[list[WorkloadEntry]], tuple[Hashable, M] | None],
    ) -> AsyncIterator[M]:
        try:
            async for message in self._watch(context, build):
                yield message
        except TrustdError as exc:
            await context.abort(_status(exc), exc.detail)

    def _x509_svids(
        self, entries: list[WorkloadEntry]
    ) -> tuple[Hashable, pb.X509SVIDResponse] | None:
        bundle = self._cache.bundle
        svids = [s for s in map(self._cache.svid, (e.id for e in entries)) if s is not None]
        # Wait for the bundle and at least one minted SVID rather than send an empty set.
        if bundle is None or not svids:
            return None
        bundle_der = self._encoded.bundle_der(bundle)
        hints: set[str] = set()
        messages = []
        for svid in svids:
            # Hints tell a workload its SVIDs apart, so they must be unique in a response;
            # as in SPIRE, the first SVID (in the cache's stable order) keeps a hint.
            if svid.hint and svid.hint in hints:
                continue
            hints.add(svid.hint)
            messages.append(self._encoded.svid(svid, bundle_der))
        # SPIFFE Workload API §4.6, §5.2: the bundles of the trust domains the caller's
        # entries federate with, keyed by trust domain SPIFFE ID, own domain excluded.
        federated = {
            domain.id_string(): self._encoded.bundle_der(b)
            for domain, b in self._cache.federated_for(entries).items()
        }
        key = (
            tuple((m.spiffe_id, m.x509_svid, m.hint) for m in messages),
            bundle_der,
            tuple(federated.items()),
        )
        return key, pb.X509SVIDResponse(svids=messages, federated_bundles=federated)

    def _x509_bundles(
        self, entries: list[WorkloadEntry]
    ) -> tuple[Hashable, pb.X509BundlesResponse] | None:
        bundle = self._cache.bundle
        if bundle is None:
            return None
        bundles = {bundle.trust_domain.id_string(): self._encoded.bundle_der(bundle)}
        for domain, federated in self._cache.federated_for(entries).items():
            bundles[domain.id_string()] = self._encoded.bundle_der(federated)
        return tuple(bundles.items()), pb.X509BundlesResponse(bundles=bundles)

    def _jwt_bundles(
        self, entries: list[WorkloadEntry]
    ) -> tuple[Hashable, pb.JWTBundlesResponse] | None:
        bundle = self._cache.bundle
        if bundle is None:
            return None
        bundles = {bundle.trust_domain.id_string(): _jwt_jwks(bundle)}
        for domain, federated in self._cache.federated_for(entries).items():
            bundles[domain.id_string()] = _jwt_jwks(federated)
        return tuple(bundles.items()), pb.JWTBundlesResponse(bundles=bundles)

    async def FetchX509SVID(  # noqa: N802 - the spec's method name
        self, request: pb.X509SVIDRequest, context: Context
    ) -> AsyncIterator[pb.X509SVIDResponse]:
        async for message in self._stream(context, self._x509_svids):
            yield message

    async def FetchX509Bundles(  # noqa: N802
        self, request: pb.X509BundlesRequest, context: Context
    ) -> AsyncIterator[pb.X509BundlesResponse]:
        async for message in self._stream(context, self._x509_bundles):
            yield message

    async def FetchJWTBundles(  # noqa: N802
        self, request: pb.JWTBundlesRequest, context: Context
    ) -> AsyncIterator[pb.JWTBundlesResponse]:
        async for message in self._stream(context, self._jwt_bundles):
            yield message

    async def FetchJWTSVID(  # noqa: N802
        self, request: pb.JWTSVIDRequest, context: Context
    ) -> pb.JWTSVIDResponse:
        return await _answer(context, self._fetch_jwt_svid(request, context))

    async def _fetch_jwt_svid(
        self, request: pb.JWTSVIDRequest, context: Context
    ) -> pb.JWTSVIDResponse:
        entries = self._entries(await self._attest(context))
        if not request.audience:
            raise InvalidRequest("audience must be specified")
        if request.spiffe_id:
            wanted = SpiffeId.parse(request.spiffe_id)
            entries = [e for e in entries if e.spiffe_id == wanted]
            if not entries:
                raise PermissionDenied(f"this workload is not entitled to {request.spiffe_id}")
        svids = []
        seen: set[SpiffeId] = set()
        for entry in entries:
            if entry.spiffe_id in seen:
                continue
            seen.add(entry.spiffe_id)
            jwt = await self._jwt_source.fetch_jwt_svid(entry.spiffe_id, list(request.audience))
            svids.append(pb.JWTSVID(spiffe_id=str(jwt.spiffe_id), svid=jwt.token, hint=entry.hint))
        return pb.JWTSVIDResponse(svids=svids)

    # -- WIT-SVID profile (experimental) --------------------------------------------------

    def _wit_bundle(self) -> TrustBundle:
        """The bundle whose wit-svid keys make WIT-SVIDs available here.

        Raises:
            Unimplemented: no WIT-SVID source, or no wit-svid key in the bundle (WIT-SVID
                §6.2: the trust domain does not support WIT-SVIDs).
            NotReady: no bundle yet.
        """
        bundle = self._cache.bundle
        if self._wit_source is None:
            raise _wit_unimplemented()
        if bundle is None:
            raise NotReady("the agent has no trust bundle yet")
        if not bundle.wit_authorities:
            raise _wit_unimplemented()
        return bundle

    async def FetchWITSVID(  # noqa: N802
        self, request: pb.WITSVIDRequest, context: Context
    ) -> AsyncIterator[pb.WITSVIDResponse]:
        try:
            # Checked before attestation: where the profile is off, the answer is the same
            # Unimplemented as for any method the endpoint does not serve.
            self._wit_bundle()
            caller = await self._attest(context)
            last: Hashable = None
            while True:
                generation = self._cache.generation
                entries = self._entries(caller)
                self._wit_bundle()
                held = await self._wit_svids(entries)
                key = tuple((h.svid.spiffe_id, h.svid.token, hint) for h, hint in held)
                if held and key != last:
                    last = key
                    yield pb.WITSVIDResponse(
                        svids=[
                            pb.WITSVID(
                                spiffe_id=str(h.svid.spiffe_id),
                                wit_svid=h.svid.token,
                                # The private key as a JWK, as the draft's proto asks.
                                wit_svid_key=json.dumps(workload_private_jwk(h.private_key)),
                                hint=hint,
                            )
                            for h, hint in held
                        ]
                    )
                # Again when the entries or the bundle change, or the first one is due.
                due = min((h.refresh_at for h, _ in held), default=None)
                timeout = max(0.0, (due - self._clock.now()).total_seconds()) if due else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cache.wait_changed(generation), timeout)
        except TrustdError as exc:
            await context.abort(_status(exc), exc.detail)

    async def _wit_svids(self, entries: list[WorkloadEntry]) -> list[tuple[HeldWitSvid, str]]:
        assert self._wit_source is not None
        held: list[tuple[HeldWitSvid, str]] = []
        seen: set[SpiffeId] = set()
        hints: set[str] = set()
        for entry in entries:
            # One per identity; hints unique in a response, as for X509-SVIDs.
            if entry.spiffe_id in seen or (entry.hint and entry.hint in hints):
                continue
            seen.add(entry.spiffe_id)
            hints.add(entry.hint)
            held.append((await self._wit_source.fetch_wit_svid(entry.spiffe_id), entry.hint))
        return held

    async def FetchWITBundles(  # noqa: N802
        self, request: pb.WITBundlesRequest, context: Context
    ) -> AsyncIterator[pb.WITBundlesResponse]:
        try:
            self._wit_bundle()
        except TrustdError as exc:
            await context.abort(_status(exc), exc.detail)
        async for message in self._stream(context, self._wit_bundles):
            yield message

    def _wit_bundles(
        self, entries: list[WorkloadEntry]
    ) -> tuple[Hashable, pb.WITBundlesResponse] | None:
        bundle = self._wit_bundle()
        bundles = {bundle.trust_domain.id_string(): _jwks_of(bundle, USE_WIT_SVID)}
        for domain, federated in self._cache.federated_for(entries).items():
            if federated.wit_authorities:
                bundles[domain.id_string()] = _jwks_of(federated, USE_WIT_SVID)
        # One message holds the whole set: `more` stays false.
        return tuple(bundles.items()), pb.WITBundlesResponse(bundles=bundles, more=False)

    async def ValidateJWTSVID(  # noqa: N802
        self, request: pb.ValidateJWTSVIDRequest, context: Context
    ) -> pb.ValidateJWTSVIDResponse:
        return await _answer(context, self._validate_jwt_svid(request, context))

    async def _validate_jwt_svid(
        self, request: pb.ValidateJWTSVIDRequest, context: Context
    ) -> pb.ValidateJWTSVIDResponse:
        entries = self._entries(await self._attest(context))
        if not request.audience:
            raise InvalidRequest("audience must be specified")
        if not request.svid:
            raise InvalidRequest("svid must be specified")
        bundle = self._cache.bundle
        if bundle is None:
            raise NotReady("the agent has no trust bundle yet")
        # spiffe/spiffe#375, JWT-SVID §7: a token is judged only by the bundle of the trust
        # domain of its own subject: this domain's, or a federated one the caller's entries
        # federate with. The subject is read unverified to pick the bundle; validation
        # then checks the signature with that bundle's keys and the subject's domain again.
        domain = _subject_domain(request.svid)
        if domain is not None and domain != bundle.trust_domain:
            federated = self._cache.federated_for(entries).get(domain)
            if federated is None:
                raise InvalidJwt(f"no bundle of trust domain {domain.name} is held for this caller")
            bundle = federated
        jwt = validate_jwt_svid(
            request.svid, bundle.jwt_authorities, request.audience, self._clock, bundle.trust_domain
        )
        claims = struct_pb2.Struct()
        claims.update(validated_claims(jwt.token))
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(jwt.spiffe_id), claims=claims)


def _subject_domain(token: str) -> TrustDomain | None:
    """The trust domain of the `sub` claim of *token*, read without verification (None: no
    readable subject; validation then refuses the token with the reason)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > MAX_TOKEN_BYTES:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return SpiffeId.parse(payload["sub"]).trust_domain
    except (ValueError, TypeError, KeyError, TrustdError):
        return None


class WorkloadApiServer:
    """A running Workload API: the public socket's relay and the gRPC server behind it."""

    def __init__(self, server: grpc.aio.Server, relay: PeerRelay, private_dir: Path) -> None:
        self.server = server
        self.relay = relay
        self.private_dir = private_dir

    @property
    def socket_path(self) -> Path:
        return self.relay.public_path

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting, end open streams (after `grace` seconds) and remove the sockets."""
        await self.relay.close()
        await self.server.stop(grace)
        shutil.rmtree(self.private_dir, ignore_errors=True)


# sun_path is 108 bytes on Linux, its terminating NUL included (unix(7)).
SUN_PATH_MAX = 107
# "/.trustd-" + mkdtemp's 8 random characters + "/s".
_PRIVATE_SUFFIX_LENGTH = len("/.trustd-") + 8 + len("/s")


async def start_workload_api(
    socket_path: Path | str,
    cache: SvidCache,
    jwt_source: JwtSvidSource,
    attestor: Attestor | None = None,
    *,
    clock: Clock | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    addresses: WorkloadAddresses | None = None,
    wit_source: WitSvidSource | None = None,
) -> WorkloadApiServer:
    """Serve the Workload API on `socket_path` (created world-connectable) until stopped;
    callers that match entries are noted in `addresses`, when given; WIT-SVIDs come from
    `wit_source` (none: FetchWITSVID and FetchWITBundles answer Unimplemented).

    Must be called on the event loop that writes `cache`.

    Raises:
        WorkloadAttestationError: `socket_path` exists and is not a socket.
        OSError: a socket cannot be bound.
    """
    public = Path(socket_path)
    longest = max(
        len(os.fsencode(public)), len(os.fsencode(public.parent)) + _PRIVATE_SUFFIX_LENGTH
    )
    if longest > SUN_PATH_MAX:
        raise OSError(
            errno.ENAMETOOLONG,
            f"the Workload API socket's directory {public.parent} is too deep: Unix socket "
            f"paths hold at most {SUN_PATH_MAX} bytes (unix(7)); choose a shorter --socket",
        )
    public.parent.mkdir(parents=True, exist_ok=True)
    # The gRPC server listens inside a 0700 directory (mkdtemp) so only the agent reaches
    # it; workloads come in through the relay, which records who they are.
    private_dir = Path(tempfile.mkdtemp(prefix=".trustd-", dir=public.parent))
    relay = PeerRelay(public, str(private_dir / "s"), max_connections)
    server = grpc.aio.server()
    servicer = WorkloadApi(
        cache,
        jwt_source,
        attestor if attestor is not None else UnixWorkloadAttestor(),
        relay,
        clock if clock is not None else SystemClock(),
        addresses,
        wit_source,
    )
    pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)
    _offer_reflection(server)
    try:
        server.add_insecure_port(f"unix:{relay.upstream_path}")
        await server.start()
        await relay.start()
    except BaseException:
        await relay.close()
        await server.stop(None)
        with contextlib.suppress(OSError):
            shutil.rmtree(private_dir)
        raise
    log.info("workload_api.started", socket=str(public))
    return WorkloadApiServer(server, relay, private_dir)
