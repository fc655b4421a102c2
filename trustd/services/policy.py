"""Policy bundles, the active revision, decisions, the decision cache and the decision log.

Every replica evaluates the active revision: activating one is a database row (durable
first), then `bus.publish("policy", revision)`; each process reloads when it hears it and,
because a notification can be lost, also checks the database every
`policy_reload_interval`. A bundle that does not compile is refused before anything is
stored, so the active policy stays active.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter
from sqlalchemy import Engine
from sqlmodel import Session

from pki.clock import Clock
from policy import data as documents
from policy import json_text
from policy.bundle import Bundle, ModuleId, canonical_json, diff
from policy.compile import check_query, query_refusal, refusal, rule_paths
from policy.engine import EmbeddedEngine, PolicyEngine, Result, parse_path
from policy.errors import (
    InvalidDataWrite,
    InvalidInput,
    PolicyError,
    PolicyEvaluationError,
    UnknownPath,
)
from policy.remote import RemoteEngine
from policy.testing import load_directory
from policy.verdicts import named_trust_domains
from trustd import tracing
from trustd.bus import Bus
from trustd.domain.policy import Decision, DecisionFilter, LoggedDecision, PolicyRevisionRecord
from trustd.errors import Conflict, InvalidRequest, NotFound, NotReady
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.settings import Settings
from trustd.store.db import lock_for_initialisation, transaction
from trustd.store.federation import list_federations
from trustd.store.policy import (
    create_policy_activation,
    create_policy_decisions,
    create_policy_revision,
    fetch_active_policy_revision,
    fetch_policy_revision,
    list_policy_activations,
    list_policy_decisions,
    list_policy_decisions_since,
    list_policy_revisions,
    lock_policy_writes,
    prune_policy_decisions,
)

log = structlog.get_logger("trustd.policy")
CHANNEL = "policy"
# The Rego modules shipped with trustd (`rego/` next to the packages), the first bundle
# when no revision exists yet and no `policy_dir` is configured.
SHIPPED_REGO = Path(__file__).resolve().parents[2] / "rego"
_MASK_RULE = "data.system.log.mask"
_BATCH = 500
# Rows built or inserted between two chances for the event loop to take the GIL back.
_SLICE = 50
# How often the decision-log writer looks for entries when fewer than a batch wait.
_INTERVAL = 0.1

DECISIONS = Counter("trustd_policy_decisions_total", "Policy decisions, by cache use.", ["cache"])
DECISION_ERRORS = Counter(
    "trustd_policy_decision_errors_total",
    "Policy decisions whose evaluation failed (engine error or panic).",
)
_DECISION_HITS = DECISIONS.labels("hit")
_DECISION_MISSES = DECISIONS.labels("miss")
LOG_DROPPED = Counter(
    "trustd_policy_decision_log_dropped_total",
    "Decision-log entries dropped because the log queue was full.",
)


class DecisionIds:
    """UUID-shaped decision ids: a random per-process prefix and a counter. Unique across
    processes and replicas without a system call per decision (os.urandom, behind uuid4,
    can cost more than the decision itself); decision ids are labels, not secrets."""

    def __init__(self) -> None:
        # The text `uuid.UUID(bytes=prefix + counter)` has, formatted without building one.
        text = secrets.token_bytes(8).hex()
        self._prefix = f"{text[:8]}-{text[8:12]}-{text[12:]}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        count = f"{next(self._counter):016x}"
        return f"{self._prefix}{count[:4]}-{count[4:]}"


@dataclass(frozen=True)
class _Active:
    revision: int
    bundle: Bundle
    local: EmbeddedEngine
    engine: PolicyEngine


# (revision, path, input, strict-builtin-errors): a decision is a function of these.
CacheKey = tuple[int, str, str, bool]


class DecisionCache:
    """LRU of results keyed by (revision, path, canonical input); a new revision makes every
    older key unreachable, and `clear` drops them at once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[CacheKey, Result] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Result | None:
        if not self._size:
            return None
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: CacheKey, value: Result) -> None:
        if not self._size:
            return
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class _Entry:
    decision: Decision
    at: datetime
    input_json: str
    caller: str
    masker: EmbeddedEngine


def apply_masks(document: dict[str, Any], masks: Any) -> None:
    """OPA `system.log.mask`: JSON pointers (`/input/password`) are removed; objects
    `{"op": "upsert", "path": ..., "value": ...}` set a value. Only under `/input` and
    `/result`."""
    for mask in masks if isinstance(masks, list) else []:
        op, pointer, value = "remove", mask, None
        if isinstance(mask, dict):
            op, pointer, value = mask.get("op", "remove"), mask.get("path"), mask.get("value")
        if not isinstance(pointer, str) or not pointer.startswith(("/input", "/result")):
            continue
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        node: Any = document
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if op == "remove":
            node.pop(parts[-1], None)
        elif op == "upsert":
            node[parts[-1]] = value


def _peer(value: Any) -> str | None:
    return value[:2048] if isinstance(value, str) else None


class DecisionLog:
    """Writes decisions in batches from a background thread, off the request path.

    `submit` never blocks and wakes no one: it appends to a bounded buffer (when it is full
    the entry is dropped and counted) that the writer drains every `_INTERVAL`, or as soon
    as a batch's worth waits. A decision log is a record of answers, not an issuance
    record: entries still buffered when a process is killed are lost (at most
    `_INTERVAL` of them under a steady load); a clean stop writes them all.
    """

    def __init__(self, engine: Engine, clock: Clock, settings: Settings) -> None:
        self._engine = engine
        self._clock = clock
        self._retention = settings.decision_log_retention
        self._max_rows = settings.decision_log_max_rows
        self._capacity = settings.decision_log_queue
        # deque.append and popleft are atomic: the request path takes no lock.
        self._pending: collections.deque[_Entry] = collections.deque()
        self._wake = threading.Event()
        # `_busy` while the writer holds entries it took but has not written yet.
        self._idle = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self._last_prune = 0.0

    def submit(self, entry: _Entry) -> None:
        if self._thread is None:
            self._start()
        if len(self._pending) >= self._capacity:
            self.dropped += 1
            LOG_DROPPED.inc()
            return
        self._pending.append(entry)
        if len(self._pending) == _BATCH:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="trustd-decision-log", daemon=True
                )
                self._thread.start()

    def flush(self) -> None:
        """Wait until every submitted entry is written (tests, shutdown)."""
        if self._thread is None:
            return
        with self._idle:
            while self._pending or self._busy:
                self._wake.set()
                self._idle.wait(0.05)

    def stop(self) -> None:
        thread = self._thread
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(_INTERVAL)
            self._wake.clear()
            with self._idle:
                self._busy = True
            try:
                while self._pending:
                    batch: list[_Entry] = []
                    while self._pending and len(batch) < _BATCH:
                        batch.append(self._pending.popleft())
                    self._write_batch(batch)
                self._prune_quietly()
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
            if self._stopping and not self._pending:
                return

    def _write_batch(self, entries: list[_Entry]) -> None:
        try:
            self._write(entries)
        except Exception as exc:
            # The log must never take decisions down with it: count and carry on.
            self.dropped += len(entries)
            LOG_DROPPED.inc(len(entries))
            log.error("decision_log_write_failed", error=type(exc).__name__, lost=len(entries))

    def _prune_quietly(self) -> None:
        try:
            self._maybe_prune()
        except Exception as exc:
            log.error("decision_log_prune_failed", error=type(exc).__name__)

    def _row(self, entry: _Entry) -> dict[str, Any]:
        decision = entry.decision
        document: dict[str, Any] = {"input": json_text.loads(entry.input_json)}
        if decision.result.defined:
            document["result"] = decision.result.value
        if ("system", "log") in entry.masker.packages:
            masks = entry.masker.query(_MASK_RULE, canonical_json(document))
            apply_masks(document, masks.value)
        logged_input = document.get("input")
        peers = logged_input if isinstance(logged_input, dict) else {}
        return {
            "decision_id": decision.decision_id,
            "at": entry.at,
            "path": decision.path,
            "input": logged_input,
            "source": _peer(peers.get("source")),
            "destination": _peer(peers.get("destination")),
            "result": document.get("result"),
            "defined": decision.result.defined,
            "result_hash": result_hash(decision.result),
            "verdict": decision_verdict(decision.result),
            "revision": decision.revision,
            "latency_us": decision.latency_us,
            "caller": entry.caller[:256],
        }

    def _write(self, entries: list[_Entry]) -> None:
        # In slices, letting the event loop's thread in between: a batch's rows are
        # Python work under the GIL, which the loop would otherwise wait out in full (up to
        # the interpreter's switch interval, 5 ms, at a time).
        rows: list[dict[str, Any]] = []
        for start in range(0, len(entries), _SLICE):
            rows.extend(self._row(e) for e in entries[start : start + _SLICE])
            time.sleep(0)
        with transaction(self._engine) as session:
            for start in range(0, len(rows), _SLICE):
                create_policy_decisions(session, rows[start : start + _SLICE])
                time.sleep(0)

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < 60:
            return
        self._last_prune = time.monotonic()
        prune_decisions(self._engine, self._clock.now() - self._retention, self._max_rows)


# The fields a decision object carries its verdict in: `allowed` (trustd.mesh, Envoy's
# ext_authz response shape) and `allow` (OPA's usual rule name).
_VERDICT_FIELDS = ("allowed", "allow")


def decision_verdict(result: Result) -> bool | None:
    """Whether a decision allowed or denied, wherever its result says it: a boolean result,
    or a boolean `allowed`/`allow` field of an object result; None otherwise."""
    value = result.value if result.defined else None
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for name in _VERDICT_FIELDS:
            if isinstance(value.get(name), bool):
                return bool(value[name])
    return None


def result_hash(result: Result) -> str:
    if not result.defined:
        return _hash_text("undefined")
    value = result.value
    if value is None or isinstance(value, bool | int | str):
        return _scalar_hash(type(value).__name__, value)
    return _hash_text(canonical_json(value))


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1024)
def _scalar_hash(kind: str, value: Any) -> str:
    # Most results are true/false: hash each scalar once (keyed by type too: 1 is not true).
    return _hash_text(canonical_json(value))


def prune_decisions(engine: Engine, before: datetime, max_rows: int) -> int:
    """Delete decisions older than `before`, then the oldest beyond `max_rows`, in one
    transaction; returns how many were deleted."""
    with transaction(engine) as session:
        return prune_policy_decisions(session, before, max_rows)


def normalise_input(raw: Any) -> str:
    """The canonical JSON text of a decision input (the cache key and the engine's input).

    Raises:
        InvalidInput: the value cannot be encoded as JSON.
    """
    try:
        return json_text.canonical(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input is not a JSON document: {exc}") from None


def _load_public_key(path: Path) -> Any:
    data = path.read_bytes()
    if b"CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


class PolicyService:
    """Owns the active revision in this process and every change to the bundles."""

    def __init__(
        self, settings: Settings, engine: Engine, clock: Clock, audit: AuditLog, bus: Bus
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._active: _Active | None = None
        self._reload_lock = threading.Lock()
        self._load_lock = threading.Lock()
        # Amendments of the active revision in this process, one at a time (the store's
        # lock serialises replicas).
        self._amend_lock = threading.Lock()
        self.cache = DecisionCache(settings.decision_cache_size)
        self.decision_log = DecisionLog(engine, clock, settings)
        self._ids = DecisionIds()

    # -- loading -------------------------------------------------------------------------

    def _build(self, revision: int, bundle: Bundle) -> _Active:
        local = EmbeddedEngine(bundle.modules, bundle.data)
        engine: PolicyEngine = local
        s = self._settings
        if s.policy_engine == "remote":
            assert s.policy_remote_url is not None
            engine = RemoteEngine(
                s.policy_remote_url,
                s.policy_remote_token.get_secret_value() if s.policy_remote_token else None,
                str(s.policy_remote_ca_bundle) if s.policy_remote_ca_bundle else None,
            )
        return _Active(revision, bundle, local, engine)

    def load(self) -> None:
        """Load the active revision; on a database without one, create revision 1 from
        `policy_dir` (or the shipped `rego/`) and activate it.

        Raises:
            PolicyCompileError: the active revision no longer compiles (an engine upgrade).
        """
        with transaction(self._engine) as session:
            lock_for_initialisation(session)
            current = self._active_record(session)
            if current is None:
                directory = self._settings.policy_dir or SHIPPED_REGO
                if not directory.is_dir():
                    return
                bundle = load_directory(directory, tests=False)
                EmbeddedEngine(bundle.modules, bundle.data)
                current = self._store(session, "system:bootstrap", bundle, False, "initial")
                self._activate_row(session, "system:bootstrap", current)
        self._install(current)

    def _install(self, row: PolicyRevisionRecord) -> None:
        bundle = Bundle(row.modules, row.data, row.label, row.manifest_metadata)
        with self._reload_lock:
            self._active = self._build(row.revision, bundle)
            self.cache.clear()
        log.info("policy_revision_loaded", revision=row.revision)

    def reload_if_changed(self) -> bool:
        """Load the active revision from the database if it is not the one in memory."""
        # Verdict compilation asks on every agent's sync: the active number alone answers.
        with transaction(self._engine) as session:
            revision = fetch_active_policy_revision(session)
        if revision is None or self._holds(revision):
            return False
        # Every long-poll an activation wakes asks at once: one thread loads the revision,
        # the others then find it loaded.
        with self._load_lock:
            with transaction(self._engine) as session:
                revision = fetch_active_policy_revision(session)
                if revision is None or self._holds(revision):
                    return False
                row = fetch_policy_revision(session, revision)
            if row is None:
                return False
            self._install(row)
        return True

    def _holds(self, revision: int) -> bool:
        return self._active is not None and self._active.revision == revision

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every `policy` notification, and every reload interval regardless,
        until *stop* is set.

        The loop is stopped, never cancelled: cancelling would abandon a reload running in
        a worker thread, which then returns its connection to a pool already disposed.
        """
        interval = self._settings.policy_reload_interval.total_seconds()
        stopped = asyncio.create_task(stop.wait())
        notified: asyncio.Task[str] | None = None
        try:
            while not stop.is_set():
                if notified is None or notified.done():
                    notified = asyncio.create_task(self._bus.wait(CHANNEL))
                await asyncio.wait(
                    {notified, stopped}, timeout=interval, return_when="FIRST_COMPLETED"
                )
                if stop.is_set():
                    return
                try:
                    await asyncio.to_thread(self.reload_if_changed)
                except Exception as exc:
                    log.error("policy_reload_failed", error=type(exc).__name__, detail=str(exc))
        finally:
            stopped.cancel()
            if notified is not None:
                notified.cancel()

    @property
    def active(self) -> _Active:
        if self._active is None:
            raise NotReady("no policy revision is active yet: import or create a bundle")
        return self._active

    @property
    def revision(self) -> int | None:
        return self._active.revision if self._active else None

    # -- decisions -----------------------------------------------------------------------

    def decide(self, path: str, input_json: str, caller: str, *, strict: bool = False) -> Decision:
        """Evaluate `path` for a canonical JSON input against the active revision; `strict`
        is OPA's `strict-builtin-errors` (a failing builtin fails the decision).

        Raises:
            NotReady: no revision is active.
            UnknownPath: nothing lives at `path`.
            PolicyEvaluationError: evaluation failed (engine error or panic).
        """
        outcome = self.decide_many(path, (input_json,), caller, strict=strict)[0]
        if isinstance(outcome, PolicyError):
            try:
                raise outcome
            finally:
                # Its traceback holds this frame: no cycle through the local (the
                # collector would free it on whichever thread it runs, see
                # policy/engine.py `_guard`).
                del outcome
        return outcome

    @tracing.traced("trustd.policy.decision")
    def decide_many(
        self, path: str, inputs: Iterable[str], caller: str, *, strict: bool = False
    ) -> list[Decision | PolicyError]:
        """`decide` for each canonical input in turn (the single decision and the batch
        endpoint share this loop): a decision, or the error its evaluation failed with.

        Raises:
            NotReady: no revision is active.
        """
        active = self.active
        revision, engine, cache = active.revision, active.engine, self.cache
        log_on = self._settings.decision_log
        at = self._clock.now() if log_on else None
        outcomes: list[Decision | PolicyError] = []
        hits = 0
        for input_json in inputs:
            started = time.perf_counter()
            key = (revision, path, input_json, strict)
            result = cache.get(key)
            cached = result is not None
            if result is None:
                try:
                    result = engine.query(path, input_json, strict=strict)
                except PolicyError as exc:
                    if isinstance(exc, PolicyEvaluationError):
                        DECISION_ERRORS.inc()
                    # A value now, without the traceback that holds this frame (and so
                    # `outcomes`, a cycle for the collector to free on any thread).
                    outcomes.append(exc.with_traceback(None))
                    continue
                cache.put(key, result)
            else:
                hits += 1
            decision = Decision(
                self._ids.next(),
                path,
                result,
                revision,
                int((time.perf_counter() - started) * 1e6),
                cached,
            )
            outcomes.append(decision)
            if at is not None:
                self.decision_log.submit(_Entry(decision, at, input_json, caller, active.local))
        # Counted once per call: a batch of a thousand is two increments, not a thousand.
        decided = sum(1 for o in outcomes if not isinstance(o, PolicyError))
        if hits:
            _DECISION_HITS.inc(hits)
        if decided > hits:
            _DECISION_MISSES.inc(decided - hits)
        return outcomes

    def ad_hoc(self, query: str, input_json: str) -> list[dict[str, Any]]:
        """OPA's ad-hoc query (`POST /v1/query`) against the active revision: the variable
        bindings of every way `query` holds, `[]` when it does not.

        Raises:
            NotReady: no revision is active.
            PolicyCompileError: the query does not parse or compile (OPA's Query API
                answers 400 `invalid_parameter` with the problem in `errors[]`).
            PolicyEvaluationError: its evaluation failed.
        """
        check_query(query)
        try:
            return self.active.local.ad_hoc(query, input_json)
        except PolicyEvaluationError as exc:
            # The engine compiles the query as it evaluates it: a compile-time problem
            # (an unsafe variable, an unknown function) is a refused query, not a failure.
            if exc.opa_code.startswith("rego_"):
                raise query_refusal(exc.opa_code, exc.detail) from None
            raise

    def require_known(self, path: str) -> None:
        """Raises:
        UnknownPath: no package, rule or data document at `path` in the active bundle.
        """
        segments = parse_path(path)
        if not self.active.local.is_known(segments):
            raise UnknownPath(f"no policy or data at data.{'.'.join(segments)}")

    # -- revisions -----------------------------------------------------------------------

    @staticmethod
    def _active_record(session: Session) -> PolicyRevisionRecord | None:
        revision = fetch_active_policy_revision(session)
        return fetch_policy_revision(session, revision) if revision is not None else None

    def _store(
        self, session: Session, actor: str, bundle: Bundle, signed: bool, note: str
    ) -> PolicyRevisionRecord:
        row = create_policy_revision(
            session,
            label=bundle.revision,
            digest=bundle.digest,
            modules=bundle.modules,
            data=bundle.data,
            manifest_metadata=bundle.metadata,
            signed=signed,
            note=note[:512],
            created_by=actor,
            created_at=self._clock.now(),
        )
        self._audit.record(
            session,
            actor,
            "policy:revision:created",
            target=str(row.revision),
            details={
                "digest": row.digest,
                "modules": sorted(bundle.modules),
                "signed": signed,
                "note": row.note,
            },
        )
        return row

    def _activate_row(self, session: Session, actor: str, row: PolicyRevisionRecord) -> None:
        create_policy_activation(session, row.revision, actor, self._clock.now())
        self._audit.record(session, actor, "policy:revision:activated", target=str(row.revision))

    def _announce(self, row: PolicyRevisionRecord) -> None:
        # Durable first (committed above), then this process, then every other replica.
        self._install(row)
        self._bus.publish(CHANNEL, str(row.revision))

    def create_revision(
        self,
        actor: Principal,
        bundle: Bundle,
        *,
        activate: bool,
        signed: bool = False,
        note: str = "",
    ) -> PolicyRevisionRecord:
        """Store a bundle as a new revision (compiled first), optionally activating it.

        Raises:
            PolicyCompileError: a module does not parse or compile; nothing is stored.
        """
        EmbeddedEngine(bundle.modules, bundle.data)
        with transaction(self._engine) as session:
            self._refuse_unknown_domains(session, bundle)
            row = self._store(session, actor.name, bundle, signed, note)
            if activate:
                self._activate_row(session, actor.name, row)
        if activate:
            self._announce(row)
        return row

    def activate(self, actor: Principal, revision: int) -> PolicyRevisionRecord:
        """Make the stored *revision* the active one on every replica.

        Raises:
            NotFound: no such revision.
            PolicyCompileError: the revision does not compile with this engine.
        """
        with transaction(self._engine) as session:
            row = fetch_policy_revision(session, revision)
            if row is None:
                raise NotFound(f"no policy revision {revision}")
            EmbeddedEngine(row.modules, row.data)
            self._activate_row(session, actor.name, row)
        self._announce(row)
        return row

    def rollback(self, actor: Principal) -> PolicyRevisionRecord:
        """Activate the revision that was active before the current one.

        Raises:
            Conflict: there is no earlier activation.
        """
        with transaction(self._engine) as session:
            history = list_policy_activations(session, 50)
            current = history[0] if history else None
            previous = next((r for r in history if r != current), None)
        if previous is None:
            raise Conflict("nothing to roll back to: only one revision was ever active")
        return self.activate(actor, previous)

    def list_revisions(self, limit: int = 100) -> list[PolicyRevisionRecord]:
        """The newest *limit* stored revisions, newest first."""
        with transaction(self._engine) as session:
            return list_policy_revisions(session, limit)

    def get_revision(self, revision: int) -> PolicyRevisionRecord:
        """The stored revision *revision*.

        Raises:
            NotFound: no such revision.
        """
        with transaction(self._engine) as session:
            row = fetch_policy_revision(session, revision)
        if row is None:
            raise NotFound(f"no policy revision {revision}")
        return row

    def diff(self, old: int, new: int) -> dict[str, Any]:
        """Raises:
        NotFound: either revision does not exist.
        """
        a, b = self.get_revision(old), self.get_revision(new)
        return diff(Bundle(a.modules, a.data), Bundle(b.modules, b.data))

    def export_bundle(self, revision: int) -> bytes:
        """The revision as an OPA bundle, signed when a signing key is configured.

        Raises:
            NotFound: no such revision.
        """
        row = self.get_revision(revision)
        key = None
        if self._settings.policy_bundle_signing_key is not None:
            key = serialization.load_pem_private_key(
                self._settings.policy_bundle_signing_key.read_bytes(), None
            )
        bundle = Bundle(row.modules, row.data, row.label or str(row.revision))
        return bundle.to_targz(key, self._settings.policy_bundle_signing_keyid)

    def import_bundle(
        self, actor: Principal, blob: bytes, *, activate: bool
    ) -> PolicyRevisionRecord:
        """Verify and store an OPA bundle.

        Raises:
            InvalidPolicyBundle: the archive is malformed.
            BundleSignatureError: a required signature is missing or does not verify.
            PolicyCompileError: a module does not compile; nothing is stored.
        """
        keys = {k: _load_public_key(p) for k, p in self._settings.policy_bundle_keys.items()}
        bundle = Bundle.from_targz(
            blob, keys, require_signature=self._settings.policy_bundle_require_signature
        )
        signed = b".signatures.json" in blob or bool(keys)
        return self.create_revision(
            actor, bundle, activate=activate, signed=signed and bool(keys), note="imported"
        )

    # -- amending the active revision (OPA /v1/policies and /v1/data writes) -------------

    def _amend(
        self, actor: Principal, change: Callable[[Bundle], Bundle | None], note: str
    ) -> PolicyRevisionRecord | None:
        """A new revision made from the active one by `change`, activated on every replica;
        None (nothing stored) when `change` returns None.

        The active revision is read under the store's write lock, not from this process's
        memory: a change another replica made a moment ago is not yet loaded here, and
        amending the loaded revision would undo it.

        Raises:
            NotReady: no revision is active.
            PolicyCompileError: the new module set does not compile, or a rule's path
                holds data (OPA's path-conflict check); nothing is stored.
            InvalidDataWrite: a data write that puts data where a rule lives.
            Whatever `change` raises; nothing is stored then either.
        """
        # Installed here under the same lock: two amendments in a row are installed in
        # the order they were made, never the older one last.
        with self._amend_lock:
            with transaction(self._engine) as session:
                lock_policy_writes(session)
                base = self._active_record(session)
                if base is None:
                    raise NotReady("no policy revision is active yet: import or create one")
                bundle = change(Bundle(base.modules, base.data))
                if bundle is None:
                    return None
                EmbeddedEngine(bundle.modules, bundle.data)
                self._refuse_conflicts(bundle, data_only=bundle.modules == base.modules)
                self._refuse_unknown_domains(session, bundle, Bundle(base.modules, base.data))
                row = self._store(session, actor.name, bundle, False, note)
                self._activate_row(session, actor.name, row)
            self._announce(row)
        return row

    def _refuse_unknown_domains(
        self, session: Session, bundle: Bundle, base: Bundle | None = None
    ) -> None:
        """A mesh rule may name IDs of this trust domain and of federated ones only: no
        caller of another domain can be verified here (no bundle is held for it, SPIFFE
        Federation §4), so such a rule could never match and is refused as a mistake. An
        amendment is judged on the domains it adds (`base`: the revision it amends).

        Raises:
            InvalidRequest: a rule names a trust domain that is neither this one nor
                federated; nothing is stored.
        """
        named = named_trust_domains(bundle.data)
        if not named:
            return
        known = {self._settings.trust_domain, *(f.trust_domain for f in list_federations(session))}
        if base is not None:
            known.update(named_trust_domains(base.data))
        unknown = sorted(set(named) - known)
        if unknown:
            domain = unknown[0]
            rules = ", ".join(sorted({n or "(unnamed)" for n in named[domain]}))
            raise InvalidRequest(
                f"mesh rule {rules} names trust domain {domain}, which is neither "
                f"{self._settings.trust_domain} nor federated "
                f"(trustd federation create --trust-domain {domain} ...)"
            )

    @staticmethod
    def _refuse_conflicts(bundle: Bundle, *, data_only: bool) -> None:
        """OPA's path-conflict check: a rule may not live where a data document does.

        Raises:
            InvalidDataWrite: for a data write (OPA answers it with the compiler's errors
                as the message).
            PolicyCompileError: for a module write (OPA's compile refusal, `errors[]`).
        """
        problems = documents.conflicts(rule_paths(bundle.modules), bundle.data)
        if not problems:
            return
        if not data_only:
            raise refusal(problems)
        first = problems[0]
        where = first["location"]
        raise InvalidDataWrite(
            f"{len(problems)} error occurred: {where['file']}:{where['row']}: "
            f"{first['code']}: {first['message']}"
        )

    # -- OPA /v1/policies: one module of the active bundle at a time ---------------------

    def modules(self) -> dict[str, str]:
        return dict(self.active.bundle.modules)

    def put_module(self, actor: Principal, module_id: str, source: str) -> PolicyRevisionRecord:
        """A new revision: the active bundle with `module_id` added or replaced, activated.

        Raises:
            InvalidModuleId: the id is not a safe relative path.
            PolicyCompileError: the module (or the bundle with it) does not compile, or one
                of its rules lives where a data document does.
        """
        module_id = str(ModuleId.parse(module_id))

        def change(base: Bundle) -> Bundle:
            return Bundle({**base.modules, module_id: source}, base.data)

        row = self._amend(actor, change, f"put {module_id}")
        assert row is not None
        return row

    def delete_module(self, actor: Principal, module_id: str) -> PolicyRevisionRecord:
        """A new revision: the active bundle without `module_id`, activated.

        Raises:
            NotFound: no such module in the active bundle.
            PolicyCompileError: other modules depend on it.
        """

        def change(base: Bundle) -> Bundle:
            if module_id not in base.modules:
                raise NotFound(f"no policy {module_id!r}")
            modules = {k: v for k, v in base.modules.items() if k != module_id}
            return Bundle(modules, base.data)

        row = self._amend(actor, change, f"delete {module_id}")
        assert row is not None
        return row

    # -- OPA /v1/data writes: data documents of the active bundle ------------------------
    # A data write is a new revision like a module write: stored and audited before the
    # answer, announced on the bus, so decision caches, every replica and the verdict
    # compiler see it; rolling back a revision rolls its data back too.

    def data(self) -> dict[str, Any]:
        """The data documents of the active revision (base documents only)."""
        return dict(self.active.bundle.data)

    def put_data(
        self,
        actor: Principal,
        path: documents.DataPath,
        value: Any,
        *,
        if_none_match: bool = False,
    ) -> PolicyRevisionRecord | None:
        """Create or overwrite the document at `path` (OPA PUT /v1/data); with
        `if_none_match` (`If-None-Match: *`) an existing document is left alone and None
        returned.

        Raises:
            InvalidDataWrite: a root that is not an object, a document too deep or too
                large, or data where a rule lives.
            DataConflict: a non-object on the way to `path`.
            DataNotFound: an array index on the way does not exist.
        """

        def change(base: Bundle) -> Bundle | None:
            if if_none_match and documents.exists(base.data, path):
                return None
            return Bundle(base.modules, documents.put(base.data, path, value))

        return self._amend(actor, change, f"data put {documents.pointer(path)}"[:512])

    def patch_data(
        self, actor: Principal, patches: list[documents.DataPatch], note_path: str
    ) -> PolicyRevisionRecord:
        """Apply JSON Patch operations, all or none (OPA PATCH /v1/data).

        Raises:
            DataNotFound: an operation's target (or its parent for add) is missing.
            InvalidDataWrite: an invalid operation on the root or an array's end, a result
                too deep or too large, or data where a rule lives.
        """

        def change(base: Bundle) -> Bundle:
            return Bundle(base.modules, documents.patch(base.data, patches))

        row = self._amend(actor, change, f"data patch {note_path}"[:512])
        assert row is not None
        return row

    def delete_data(self, actor: Principal, path: documents.DataPath) -> PolicyRevisionRecord:
        """Remove the document at `path` (OPA DELETE /v1/data).

        Raises:
            DataNotFound: nothing lives there.
            InvalidDataWrite: `path` is the root.
        """

        def change(base: Bundle) -> Bundle:
            return Bundle(base.modules, documents.remove(base.data, path))

        row = self._amend(actor, change, f"data delete {documents.pointer(path)}"[:512])
        assert row is not None
        return row

    # -- the decision log ----------------------------------------------------------------

    def query_decisions(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        path: str | None = None,
        caller: str | None = None,
        result: Any = None,
        undefined: bool = False,
        limit: int = 100,
    ) -> list[LoggedDecision]:
        """Logged decisions, newest first, narrowed by time, path, caller and result (a
        JSON value, or *undefined* for decisions without one). A boolean *result* matches
        the decision's verdict, so `false` finds `{"allowed": false, ...}` too."""
        wanted: str | None = None
        verdict: bool | None = None
        if isinstance(result, bool) and not undefined:
            verdict = result
        elif undefined or result is not None:
            wanted = result_hash(Result(False) if undefined else Result(True, result))
        where = DecisionFilter(
            since=since,
            until=until,
            path=path,
            caller=caller,
            result_hash=wanted,
            verdict=verdict,
            limit=limit,
        )
        with transaction(self._engine) as session:
            return list_policy_decisions(session, where)

    def export_decisions(self, since: datetime | None = None) -> Iterator[str]:
        """Every logged decision (after `since`) as JSON lines, oldest first."""
        last: tuple[datetime, str] | None = None
        while True:
            with transaction(self._engine) as session:
                rows = list_policy_decisions_since(session, since, last, 1000)
            if not rows:
                return
            for row in rows:
                yield json.dumps(decision_document(row)) + "\n"
            last = (rows[-1].at, rows[-1].decision_id)

    def close(self) -> None:
        self.decision_log.stop()


def decision_document(row: LoggedDecision) -> dict[str, Any]:
    """A decision as OPA's decision-log event names its fields."""
    document: dict[str, Any] = {
        "decision_id": row.decision_id,
        "timestamp": row.at.isoformat(),
        "path": row.path,
        "input": row.input,
        "revision": row.revision,
        "metrics": {"timer_server_handler_ns": row.latency_us * 1000},
        "caller": row.caller,
    }
    if row.defined:
        document["result"] = row.result
    if row.verdict is not None:
        # trustd's addition to OPA's fields: allowed or denied, wherever the result says it.
        document["verdict"] = "allow" if row.verdict else "deny"
    return document
