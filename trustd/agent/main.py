"""`trustd agent`: attest once, keep the node SVID fresh, sync entries, mint and rotate
workload SVIDs, and serve them on the SPIFFE Workload API.

The agent keeps serving what it holds while the server is unreachable and catches up when
it returns; it never sends a private key anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.bundle import TrustBundle
from pki.ca import certificate_pem, load_pem_certificates, serial_hex
from pki.clock import Clock
from pki.csr import create_csr
from pki.errors import KeyUnavailable, TrustdError
from pki.jwt_svid import JwtSvid
from pki.keys import (
    KeyType,
    PrivateKey,
    allowed_public_key,
    generate_private_key,
    key_type_of,
    same_public_key,
)
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.wit_svid import validate_wit_svid, workload_jwk
from trustd import metrics, tracing
from trustd.agent.addresses import WorkloadAddresses
from trustd.agent.cache import (
    HeldWitSvid,
    QuarantineNotice,
    SvidCache,
    WorkloadEntry,
    X509Svid,
)
from trustd.agent.client import (
    NodeIdentity,
    ServerClient,
    ServerError,
    bundle_from_jwks,
    pin_first_contact,
)
from trustd.agent.config import AgentConfig
from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.ebpf import BpfEnforcer, Interface, Scope
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.errors import EnforcementError, InvalidVerdicts
from trustd.agent.flows import FlowReporter
from trustd.agent.renewal import renewal_due
from trustd.domain.nodes import Unmanaged

log = structlog.get_logger("trustd.agent")
BATCH = 500
SYNC_WAIT = 30.0
MAX_BACKOFF = 30.0
# Workload addresses: a burst of attestations settles into one report; after a restart the
# first report (which replaces whatever the last run reported) waits for the workloads,
# whose Workload API streams broke, to call again.
REPORT_DEBOUNCE = 0.2
REPORT_GRACE = 5.0


class AgentError(ServerError):
    title = "Agent cannot start"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


class Agent:
    def __init__(self, config: AgentConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.cache = SvidCache()
        self.revision = 0
        # None until the first sync says where the revocation feed stands. An agent that
        # answers proxies (ext_authz) follows the whole feed: it must refuse every revoked
        # serial that has not expired, not only those revoked after it started.
        self.revocation_revision: int | None = 0 if config.serves_proxies else None
        # Revoked serials (hex) with their certificate's expiry, refused by ext_authz.
        self.revoked_serials: dict[str, datetime | None] = {}
        self.identity: NodeIdentity | None = None
        self._client: ServerClient | None = None
        self._wake_rotation = asyncio.Event()
        self._jwt_cache: dict[tuple[str, tuple[str, ...]], tuple[datetime, JwtSvid]] = {}
        self._wit_cache: dict[str, HeldWitSvid] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Set when the agent cannot go on (its node was evicted): run_agent exits with it.
        self.fatal = asyncio.Event()
        self.fatal_error: AgentError | None = None
        self._workload_server: Any = None
        # The verdicts last applied (the last good state), and the eBPF datapath.
        self.verdicts = VerdictTable()
        self._verdict_full = True
        self.enforcer: BpfEnforcer | None = None
        # The enforcement scope last written to the datapath.
        self._scope: Scope | None = None
        # When trustd last answered a sync (monotonic): past the staleness limit, every
        # enforcement point denies (the kernel keeps its own deadline, see enforce.c).
        self._synced_at = time.monotonic()
        self._extauthz: asyncio.Server | None = None
        self._extauthz_grpc: grpc.aio.Server | None = None
        # The workloads' addresses, and what the server holds of them (None: not known).
        self._report_wake = asyncio.Event()
        self._report_wake.set()
        self.addresses = WorkloadAddresses(self._report_wake.set)
        self._reported: dict[str, frozenset[str]] | None = None
        # Connection verdicts aggregated into flows for trustd (None: --no-flow-events).
        self.flows: FlowReporter | None = None

    # -- files ---------------------------------------------------------------------------

    @property
    def _bundle_file(self) -> Path:
        return self.config.data_dir / "bundle.json"

    @property
    def _node_file(self) -> Path:
        return self.config.data_dir / "node.pem"

    @property
    def _node_key_file(self) -> Path:
        return self.config.data_dir / "node-key.pem"

    def _save_bundle(self, bundle: TrustBundle) -> None:
        self._bundle_file.write_text(json.dumps(bundle.to_jwks()))

    @property
    def _node_tpm_key_file(self) -> Path:
        return self.config.data_dir / "node-key.tpm"

    def _new_node_key(self) -> PrivateKey:
        """A fresh node key: in the TPM with --node-key tpm, else in memory (and on disk)."""
        if self.config.node_key == "tpm":
            from pki.keys.tpm import TpmKey

            assert self.config.tpm_device is not None
            return TpmKey.generate(self.config.tpm_device)
        return generate_private_key(self.config.key_type)

    def _save_identity(self, identity: NodeIdentity) -> None:
        from pki.keys.tpm import TpmKey

        if isinstance(identity.key, TpmKey):
            # The TPM's encrypted copy of the key: it loads in that TPM only.
            _write_private(self._node_tpm_key_file, identity.key.blob)
            self._node_key_file.unlink(missing_ok=True)
        else:
            key_pem = identity.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(self._node_key_file, key_pem)
            self._node_tpm_key_file.unlink(missing_ok=True)
        self._node_file.write_text("".join(certificate_pem(c) for c in identity.chain))

    def _load_node_key(self) -> PrivateKey | None:
        if self.config.node_key != "tpm":
            if not self._node_key_file.exists():
                return None
            key = serialization.load_pem_private_key(self._node_key_file.read_bytes(), None)
            allowed_public_key(key.public_key())
            return key  # type: ignore[return-value]
        from pki.keys.tpm import TpmKey

        if not self._node_tpm_key_file.exists():
            return None
        assert self.config.tpm_device is not None
        try:
            return TpmKey.from_blob(self.config.tpm_device, self._node_tpm_key_file.read_bytes())
        except KeyUnavailable as exc:
            # A data directory copied from another machine: its node identity stays there.
            log.warning("node_key_not_in_this_tpm", detail=exc.detail)
            return None

    def _load_identity(self) -> NodeIdentity | None:
        if not self._node_file.exists():
            return None
        key = self._load_node_key()
        if key is None:
            return None
        chain = tuple(load_pem_certificates(self._node_file.read_bytes()))
        if not same_public_key(chain[0].public_key(), key.public_key()):
            return None
        if chain[0].not_valid_after_utc <= self.clock.now():
            return None
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spiffe_id = SpiffeId.parse(san.get_values_for_type(x509.UniformResourceIdentifier)[0])
        return NodeIdentity(spiffe_id, chain, key)

    # -- start-up ------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Trust, then identity: load what a previous run saved, or pin and attest.

        Raises:
            AgentError: nothing saved and no join token / fingerprint to start from.
            ServerError: the server refused attestation or could not be reached.
        """
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        if self._bundle_file.exists():
            bundle = bundle_from_jwks(json.loads(self._bundle_file.read_text()))
        elif cfg.ca_sha256:
            bundle = await self._pin_first_contact(cfg.ca_sha256)
            self._save_bundle(bundle)
        else:
            raise AgentError(
                "first start needs --ca-sha256 (printed by `trustd token create`) to pin the server"
            )
        self._client = ServerClient(cfg.servers, bundle, self.clock)
        await self.cache.set_bundle(bundle)
        identity = self._load_identity()
        if identity is None:
            key = await asyncio.to_thread(self._new_node_key)
            if cfg.attestor == "tpm":
                from trustd.agent.tpm import attest_with_tpm

                if not cfg.tpm_device:
                    raise AgentError("the tpm attestor needs --tpm-device")
                # The TPM is the credential: a restart (or an eviction) attests again
                # with it, to the same node, without a token.
                identity, bundle = await attest_with_tpm(
                    self._client, cfg.tpm_device, cfg.tpm_pcrs, key
                )
            else:
                if not cfg.join_token:
                    raise AgentError("this node has no identity yet: pass --join-token")
                identity, bundle = await self._client.attest(
                    "join_token", {"token": cfg.join_token}, key
                )
            self._save_identity(identity)
            self._save_bundle(bundle)
            await self.cache.set_bundle(bundle)
            log.info("attested", spiffe_id=str(identity.spiffe_id))
        self.identity = identity

    async def _pin_first_contact(self, ca_sha256: str) -> TrustBundle:
        """Pin the CA from the first server address that answers.

        Raises:
            ServerError: none answers, or one answers with a CA that is not the pinned one.
        """
        servers = self.config.servers
        for server in servers[:-1]:
            try:
                return await asyncio.to_thread(pin_first_contact, server, ca_sha256)
            except ServerError as exc:
                if "cannot fetch" not in exc.detail:
                    raise
                log.warning("server_unreachable", server=server, error=exc.detail)
        return await asyncio.to_thread(pin_first_contact, servers[-1], ca_sha256)

    async def start(self) -> None:
        """Bootstrap, start the Workload API and the background loops."""
        from trustd.agent.workload_api import start_workload_api

        await self.bootstrap()
        if self.config.enforce_interfaces:
            obj = libbpf.compile_object(self.config.data_dir / "enforce.o")
            self.enforcer = BpfEnforcer(
                obj,
                [Interface.parse(i) for i in self.config.enforce_interfaces],
                self.config.enforcement_mode,
                self.config.bpf_pin_dir,
                self.config.staleness_limit,
                self.config.flow_events,
            )
            self.enforcer.start()
        if self.config.flow_events and self.enforcing:
            self.flows = FlowReporter(lambda: self.verdicts, self.clock, self.config.flow_interval)
            if self.enforcer is not None:
                self.flows.watch(self.enforcer)
        if self.config.ext_authz_listen or self.config.ext_authz_grpc_listen:
            await self._start_proxy_filters()
        self._workload_server = await start_workload_api(
            self.config.socket_path,
            self.cache,
            self,
            addresses=self.addresses,
            wit_source=self,
        )
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="agent-sync"),
            asyncio.create_task(self.addresses.run(), name="agent-addresses"),
            asyncio.create_task(self._report_loop(), name="agent-address-reports"),
            asyncio.create_task(self._rotation_loop(), name="agent-svids"),
            asyncio.create_task(self._node_renewal_loop(), name="agent-node-svid"),
        ]
        if self.flows is not None:
            self._tasks.append(
                asyncio.create_task(
                    self.flows.run(lambda: self.client, lambda: self.node), name="agent-flows"
                )
            )

    async def _start_proxy_filters(self) -> None:
        # The policy engine and Envoy's protos cost memory on every node: loaded only on
        # the nodes that serve ext_authz.
        from trustd.agent.extauthz import Authorizer, start_extauthz
        from trustd.agent.extauthz_grpc import start_extauthz_grpc

        # One authorizer for both endpoints: its engine lives on this loop's thread.
        authorizer = Authorizer(
            lambda: self.verdicts,
            lambda: self.cache.bundle,
            self.clock,
            lambda: self.node.chain[1:],
            self.stale,
            lambda: self.revoked_serials,
            self.flows,
            lambda: self.cache.federated,
        )
        if self.config.ext_authz_listen:
            host, _, port = self.config.ext_authz_listen.rpartition(":")
            self._extauthz = await start_extauthz(host or "127.0.0.1", int(port), authorizer)
        if self.config.ext_authz_grpc_listen:
            host, _, port = self.config.ext_authz_grpc_listen.rpartition(":")
            self._extauthz_grpc, _ = await start_extauthz_grpc(
                host or "127.0.0.1", int(port), authorizer
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._workload_server is not None:
            await self._workload_server.stop(grace=1)
        if self._extauthz is not None:
            self._extauthz.close()
        if self._extauthz_grpc is not None:
            await self._extauthz_grpc.stop(grace=1)
        if self._client is not None:
            await self._client.aclose()
        if self.flows is not None:
            self.flows.close()
        if self.enforcer is not None:
            # Fail-static: the filters and pinned maps keep enforcing the last revision.
            self.enforcer.stop()

    @property
    def client(self) -> ServerClient:
        assert self._client is not None, "bootstrap() first"
        return self._client

    @property
    def node(self) -> NodeIdentity:
        assert self.identity is not None, "bootstrap() first"
        return self.identity

    # -- sync ----------------------------------------------------------------------------

    async def sync_once(self, wait: float) -> bool:
        """One long-poll; applies a change. Returns whether one came. There is no separate
        acknowledgement: the next long-poll's cursors (`since`, `verdict_since`) say what
        this agent applied, and trustd records them."""
        result = await self.client.sync(
            self.node, self.revision, self.revocation_revision, wait, self._verdict_since()
        )
        self._synced_at = time.monotonic()
        if self.enforcer is not None:
            self.enforcer.refresh()
        if not result["changed"]:
            return False
        if result.get("verdicts"):
            await self._apply_verdicts(result["verdicts"])
        await self._apply_revocations(result["revocations"])
        self.revocation_revision = int(result["revocation_revision"])
        default = result.get("default_key_type")
        # An entry without a key type follows the trust domain's default only when that is
        # ML-DSA (the server then refuses anything else); otherwise this agent's key_type.
        default_key_type = KeyType(default) if default and KeyType(default).post_quantum else None
        entries = [
            WorkloadEntry(
                id=e["id"],
                spiffe_id=SpiffeId.parse(e["spiffe_id"]),
                selectors=parse_selectors(e["selectors"]),
                x509_ttl=e["x509_ttl"],
                jwt_ttl=e["jwt_ttl"],
                dns_names=tuple(e["dns_names"]),
                hint=e["hint"],
                revision=e["revision"],
                federates_with=tuple(TrustDomain.parse(td) for td in e.get("federates_with", ())),
                key_type=KeyType(e["key_type"]) if e.get("key_type") else default_key_type,
            )
            for e in result["entries"]
        ]
        await self.cache.set_entries(entries)
        await self.cache.set_federated(self._federated_bundles(result))
        released = await self.cache.set_quarantines(
            QuarantineNotice(
                SpiffeId.parse(q["spiffe_id"]),
                q["reason"],
                datetime.fromisoformat(q["until"]) if q.get("until") else None,
            )
            for q in result.get("quarantines", ())
        )
        if released:
            log.info("quarantines_released", spiffe_ids=[str(s) for s in released])
        if result.get("scope") is not None:
            await self._apply_scope(result["scope"])
        # The entries decide which SPIFFE IDs may be reported.
        self._report_wake.set()
        if result.get("bundle"):
            bundle = bundle_from_jwks(result["bundle"])
            current = self.cache.bundle
            if current is None or bundle.sequence != current.sequence:
                await self.cache.set_bundle(bundle)
                self._save_bundle(bundle)
                await self.client.update_bundle(bundle)
        self.revision = int(result["revision"])
        self._wake_rotation.set()
        return True

    @staticmethod
    def _federated_bundles(result: dict[str, Any]) -> list[TrustBundle]:
        """The federated bundles the server sent; one that does not parse is left out (and
        said), the others are served."""
        bundles = []
        for name, document in (result.get("federated_bundles") or {}).items():
            try:
                bundles.append(TrustBundle.from_jwks(document, TrustDomain.parse(name)))
            except TrustdError as exc:
                log.warning("federated_bundle_unusable", trust_domain=name, error=exc.detail)
        return bundles

    @property
    def enforcing(self) -> bool:
        return self.enforcer is not None or self.config.serves_proxies

    def stale(self) -> bool:
        """Whether trustd has been silent for longer than the staleness limit."""
        limit = self.config.staleness_limit
        return limit is not None and time.monotonic() - self._synced_at > limit

    @property
    def _sync_wait(self) -> float:
        # A long-poll that outlasts the staleness limit would let the deadline lapse while
        # trustd is healthy: answer (and refresh it) at least three times per limit.
        limit = self.config.staleness_limit
        return SYNC_WAIT if limit is None else min(SYNC_WAIT, limit / 3)

    def _verdict_since(self) -> int | None:
        if not self.enforcing:
            return None
        return 0 if self._verdict_full else self.verdicts.revision

    async def _apply_verdicts(self, update: dict[str, Any]) -> None:
        """Apply a verdict update to every backend, or keep the last good state and ask
        for the full state on the next sync; never opens traffic because of an error.
        The kernel maps are written on a worker thread: the Workload API and ext_authz
        keep answering meanwhile."""
        try:
            table = self.verdicts.applied(update)
            if self.enforcer is not None:
                await asyncio.to_thread(self.enforcer.apply, table)
        except (InvalidVerdicts, EnforcementError) as exc:
            reason = "invalid" if isinstance(exc, InvalidVerdicts) else "datapath"
            metrics.VERDICT_ERRORS.labels(reason).inc()
            log.error("verdicts_not_applied", error=exc.detail, held=self.verdicts.revision)
            self._verdict_full = True
            return
        self.verdicts = table
        self._verdict_full = False
        metrics.VERDICT_REVISION.labels("ebpf").set(table.revision)
        # `base` 0: a full state replaced the table; else a delta from that revision.
        log.info(
            "verdicts_applied",
            revision=table.revision,
            base=int(update.get("base", 0)),
            policy=len(table.policy),
        )

    async def _apply_scope(self, scope: dict[str, Any]) -> None:
        """Write the node's enforcement scope to the datapath when it changed. The trustd
        server's own addresses are always allowed: cut off from trustd, a workload could
        not be told it is released."""
        if self.enforcer is None:
            return
        wanted = Scope(
            Unmanaged(scope["unmanaged"]),
            frozenset(scope["always_allowed"]) | self._server_prefixes(),
        )
        if wanted == self._scope:
            return
        try:
            await asyncio.to_thread(self.enforcer.set_scope, wanted)
        except EnforcementError as exc:
            metrics.VERDICT_ERRORS.labels("datapath").inc()
            log.error("scope_not_applied", error=exc.detail)
            return
        self._scope = wanted

    def _server_prefixes(self) -> frozenset[str]:
        prefixes: set[str] = set()
        for server in self.config.servers:
            host = urlsplit(server).hostname or ""
            try:
                found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                continue
            prefixes.update(f"{info[4][0]}/32" for info in found)
        return frozenset(prefixes)

    async def _apply_revocations(self, revocations: list[dict[str, Any]]) -> None:
        """Stop serving revoked SVIDs at once; the rotation pass then issues new ones. The
        serials are kept until their certificates expire, for ext_authz to refuse."""
        serials = {r["serial"] for r in revocations}
        if not serials:
            return
        if self.config.serves_proxies:
            for r in revocations:
                expiry = r.get("not_after")
                self.revoked_serials[r["serial"]] = (
                    datetime.fromisoformat(expiry) if expiry else None
                )
        revoked = [
            e.id
            for e in self.cache.entries()
            if (svid := self.cache.svid(e.id)) is not None and serial_hex(svid.chain[0]) in serials
        ]
        await self.cache.drop_svids(revoked)
        if revoked:
            log.info("svids_revoked", count=len(revoked))

    async def _sync_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self.sync_once(self._sync_wait)
                backoff = 1.0
            except ServerError as exc:
                if exc.node_inactive:
                    self._give_up(exc)
                    return
                # Keep serving what we hold; try again with growing pauses, often enough
                # to come back before the staleness limit denies everything.
                log.warning("sync_failed", error=exc.detail, retry_in_s=backoff)
                # Whatever the server holds of our report is unknown now: send it again
                # as soon as the server answers.
                self._reported = None
                self._report_wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF, self._sync_wait)

    def _give_up(self, exc: ServerError) -> None:
        """The server voided this node: drop the node identity (a restart must attest
        anew, with a new join token) and stop the agent with a non-zero exit."""
        log.error("node_evicted", detail=exc.detail)
        for path in (self._node_file, self._node_key_file, self._node_tpm_key_file):
            path.unlink(missing_ok=True)
        again = (
            "start the agent again to attest with its TPM"
            if self.config.attestor == "tpm"
            else "get a new join token (trustd token create) and start the agent with it"
        )
        self.fatal_error = AgentError(f"this node was evicted or banned ({exc.detail}): {again}")
        self.fatal.set()

    # -- workload addresses -------------------------------------------------------------

    async def report_addresses_once(self) -> bool:
        """Send the workloads' addresses if they differ from what the server holds; returns
        whether a report went out.

        Raises:
            ServerError: the server refused the report or cannot be reached.
        """
        served = {str(e.spiffe_id) for e in self.cache.entries()}
        # An entry gone from this node is gone from its report (the server would refuse it).
        wanted = {k: v for k, v in self.addresses.by_identity().items() if k in served}
        if wanted == self._reported:
            return False
        await self.client.report_addresses(self.node, wanted)
        self._reported = wanted
        metrics.AGENT_ADDRESS_REPORTS.labels("sent").inc()
        log.info(
            "addresses_reported",
            identities=len(wanted),
            addresses=sum(len(found) for found in wanted.values()),
        )
        return True

    async def _report_loop(self) -> None:
        await asyncio.sleep(REPORT_GRACE)
        backoff = 1.0
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            await asyncio.sleep(REPORT_DEBOUNCE)
            try:
                await self.report_addresses_once()
                backoff = 1.0
            except ServerError as exc:
                metrics.AGENT_ADDRESS_REPORTS.labels("failed").inc()
                log.warning("address_report_failed", error=exc.detail, retry_in_s=backoff)
                self._report_wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF, self._sync_wait)

    # -- workload SVIDs ------------------------------------------------------------------

    def due(self, now: datetime) -> list[WorkloadEntry]:
        """Entries with no SVID yet, or whose SVID reached its renewal time (none of a
        quarantined identity)."""
        due = []
        for entry in self.cache.entries():
            if self.cache.quarantine_of(entry.spiffe_id, now) is not None:
                continue
            svid = self.cache.svid(entry.id)
            if svid is None:
                due.append(entry)
                continue
            key = f"{entry.id}:{serial_hex(svid.chain[0])}"
            if renewal_due(now, svid.effective_start, svid.not_after, key):
                due.append(entry)
            elif entry.key_type is not None and key_type_of(svid.private_key) is not entry.key_type:
                # The entry now asks for another key type: the SVID held is served until
                # its replacement, made with a key of that type, arrives.
                due.append(entry)
        return due

    async def rotate_once(self) -> int:
        """Mint SVIDs for every entry that is due; returns how many were stored."""
        now = self.clock.now()
        await self._lift_expired_quarantines(now)
        self.revoked_serials = {
            serial: expiry
            for serial, expiry in self.revoked_serials.items()
            if expiry is None or expiry > now
        }
        expired = [
            e.id
            for e in self.cache.entries()
            if (s := self.cache.svid(e.id)) is not None and s.not_after <= now
        ]
        await self.cache.drop_svids(expired)
        due = self.due(now)
        stored = 0
        for start in range(0, len(due), BATCH):
            batch = due[start : start + BATCH]
            # Key generation for a batch takes tens of milliseconds: off the event loop, so
            # Workload API calls are not held up behind it.
            keys, csrs = await asyncio.to_thread(self._keys_and_csrs, batch)
            result = await self.client.sign(self.node, csrs)
            received = self.clock.now()
            by_id = {e.id: e for e in batch}
            for item in result["svids"]:
                entry = by_id[item["entry_id"]]
                chain = tuple(
                    load_pem_certificates(
                        (item["certificate"] + "".join(item["intermediates"])).encode()
                    )
                )
                await self.cache.put_svid(
                    X509Svid(entry.id, entry.spiffe_id, chain, keys[entry.id], entry.hint, received)
                )
                stored += 1
            for refused in result["refused"]:
                log.warning("svid_refused", entry_id=refused["entry_id"], reason=refused["detail"])
        if stored:
            log.info("svids_minted", stored=stored, held=self.cache.held)
        return stored

    async def _lift_expired_quarantines(self, now: datetime) -> None:
        """A quarantine whose `until` passed ends here and now, by this agent's clock, even
        when trustd is out of reach: its SVIDs are minted again and, when enforcing, its
        number leaves the kernel's denied identities (trustd's next revision agrees)."""
        lifted = await self.cache.lift_expired(now)
        if not lifted:
            return
        log.info("quarantines_expired", spiffe_ids=[str(n.spiffe_id) for n in lifted])
        numbers = {self.verdicts.identities.get(str(n.spiffe_id)) for n in lifted}
        held = self.verdicts
        if not numbers & held.revoked:
            return
        table = replace(held, revoked=held.revoked - numbers)
        try:
            if self.enforcer is not None:
                await asyncio.to_thread(self.enforcer.apply, table)
        except EnforcementError as exc:
            log.error("verdicts_not_applied", error=exc.detail, held=held.revision)
            return
        self.verdicts = table

    def _keys_and_csrs(
        self, entries: list[WorkloadEntry]
    ) -> tuple[dict[str, PrivateKey], list[tuple[str, str]]]:
        # Each workload key of the type its entry asks for (ML-DSA for an ML-DSA entry).
        keys = {e.id: generate_private_key(e.key_type or self.config.key_type) for e in entries}
        return keys, [(entry_id, create_csr(key)) for entry_id, key in keys.items()]

    async def _rotation_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self.rotate_once()
                backoff = 1.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake_rotation.wait()
                self._wake_rotation.clear()
            except ServerError as exc:
                log.warning("svid_rotation_failed", error=exc.detail, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    # -- the node SVID -------------------------------------------------------------------

    async def renew_node_if_due(self) -> bool:
        leaf = self.node.chain[0]
        if not renewal_due(
            self.clock.now(), leaf.not_valid_before_utc, leaf.not_valid_after_utc, "node"
        ):
            return False
        key = await asyncio.to_thread(self._new_node_key)
        self.identity = await self.client.renew(self.node, key)
        self._save_identity(self.identity)
        log.info(
            "node_svid_renewed", not_after=self.identity.chain[0].not_valid_after_utc.isoformat()
        )
        return True

    async def _node_renewal_loop(self) -> None:
        while True:
            try:
                await self.renew_node_if_due()
            except ServerError as exc:
                log.warning("node_svid_renewal_failed", error=exc.detail)
            await asyncio.sleep(5)

    # -- JWT-SVIDs (the Workload API's JwtSvidSource) ------------------------------------

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Any) -> JwtSvid:
        """A JWT-SVID for one of this node's identities, reused until half its life."""
        audiences = tuple(sorted(audience))
        key = (str(spiffe_id), audiences)
        now = self.clock.now()
        cached = self._jwt_cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        entry = next((e for e in self.cache.entries() if e.spiffe_id == spiffe_id), None)
        if entry is None:
            raise AgentError(f"this node holds no entry for {spiffe_id}")
        body = await self.client.jwt(self.node, entry.id, list(audiences))
        expiry = datetime.fromisoformat(body["expires_at"])
        svid = JwtSvid(
            token=body["token"],
            spiffe_id=spiffe_id,
            audience=tuple(body["audience"]),
            expiry=expiry,
            issued_at=now,
            kid=body["kid"],
        )
        self._jwt_cache[key] = (now + (expiry - now) / 2, svid)
        return svid

    # -- WIT-SVIDs (the Workload API's WitSvidSource, experimental) -----------------------

    async def fetch_wit_svid(self, spiffe_id: SpiffeId) -> HeldWitSvid:
        """A WIT-SVID for one of this node's identities, bound to a key made for it here,
        reused until half its life. WIMSE Workload Credentials §6.3: the key SHOULD be
        re-generated for each new WIT, and is bound to one identifier only.

        Raises:
            AgentError: no entry for `spiffe_id`, or the server's answer does not validate
                against the agent's bundle with the key it sent.
            ServerError: the server refused (WIT-SVIDs off, entry not the node's).
        """
        now = self.clock.now()
        # Forget keys whose token has expired (identities the node no longer serves).
        self._wit_cache = {k: v for k, v in self._wit_cache.items() if v.svid.expiry > now}
        held = self._wit_cache.get(str(spiffe_id))
        if held is not None and now < held.refresh_at:
            return held
        entry = next((e for e in self.cache.entries() if e.spiffe_id == spiffe_id), None)
        if entry is None:
            raise AgentError(f"this node holds no entry for {spiffe_id}")
        bundle = self.cache.bundle
        if bundle is None:
            raise AgentError("the agent has no trust bundle yet")
        # ES256: WIMSE Workload Credentials §3.1 makes it the one every implementation has.
        key = generate_private_key(KeyType.EC_P256)
        body = await self.client.wit(self.node, entry.id, workload_jwk(key.public_key()))
        try:
            # Check what came back before handing it out: signed by a wit-svid key of our
            # trust domain (WIT-SVID §6.2), for this identity, bound to the key just made.
            svid = validate_wit_svid(
                body["token"],
                bundle.wit_authorities,
                self.clock,
                bundle.trust_domain,
                presented_key=key.public_key(),
            )
        except TrustdError as exc:
            raise AgentError(f"the server's WIT-SVID for {spiffe_id} is refused: {exc}") from None
        if svid.spiffe_id != spiffe_id:
            raise AgentError(f"the server's WIT-SVID names {svid.spiffe_id}, not {spiffe_id}")
        held = HeldWitSvid(svid, key, now + (svid.expiry - now) / 2)
        self._wit_cache[str(spiffe_id)] = held
        return held


async def run_agent(config: AgentConfig, clock: Clock) -> None:
    """Run until SIGINT or SIGTERM."""
    tracing.configure(config.otel_endpoint, "trustd-agent")
    agent = Agent(config, clock)
    await agent.start()
    log.info("agent_ready", socket=str(config.socket_path), node=str(agent.node.spiffe_id))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(agent.fatal.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await agent.stop()
        tracing.shutdown()
    if agent.fatal_error is not None:
        raise agent.fatal_error
