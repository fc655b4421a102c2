"""Audit events: how an audited action ended, and the hash chain that makes the log
tamper-evident.

Each event carries the hash of the one before it (`prev_hash`) and its own hash over its
fields and `prev_hash` (a hash chain, as in Schneier and Kelsey's "Secure Audit Logs to
Support Computer Forensics", 1999, and the Merkle-free core of RFC 9162's logs). Editing,
deleting, inserting or reordering any event changes a hash that a later event, or a copy
held elsewhere, already committed to. A plain hash needs no key, so someone who can write
the database can also recompute the chain from the event they changed onwards: what
detects that is a copy of the chain (or of its head) kept out of their reach, which is what
`trustd audit export` feeds a SIEM with. The same applies to cutting events off the end.

The hash format is version 1 and never changes (exports already verified by third parties
depend on it): SHA-256 over the event's canonical JSON (keys sorted, no whitespace, UTF-8,
RFC 8785's shape for the strings, integers and nested objects audit details hold).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pki.errors import TrustdError

# The response headers of an export naming the head it stops at (read by `trustd audit`).
HEAD_SEQ_HEADER = "Trustd-Audit-Head-Seq"
HEAD_HASH_HEADER = "Trustd-Audit-Head-Hash"
# The `prev_hash` of the first event of the chain.
GENESIS_HASH = "0" * 64
CHAIN_VERSION = 1


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


def canonical_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """`details` as the JSON column gives it back (tuples as lists, keys as strings), so
    that the hash computed before the insert is the one recomputed from the stored row."""
    result: dict[str, Any] = json.loads(json.dumps(details, ensure_ascii=False))
    return result


def format_time(at: datetime) -> str:
    """The event time as hashed and exported: UTC, microseconds, `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ChainedAuditEvent:
    """One audit event with its place in the chain."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    request_id: str | None
    prev_hash: str
    hash: str
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def computed_hash(self) -> str:
        """SHA-256 (hex) of the event's canonical JSON, `prev_hash` included (what `hash`
        must be)."""
        return _digest(_hashed_fields(self))

    def document(self) -> dict[str, Any]:
        """The event as one line of `trustd audit export`: every hashed field under the
        name it is hashed by, plus `hash` and the row `id` (not hashed: a database key)."""
        return {**_hashed_fields(self), "hash": self.hash, "id": self.id}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ChainedAuditEvent:
        """Parse one exported line (see `document`).

        Raises:
            AuditChainBroken: a field is missing or has the wrong type (seq 0 when the line
                carries none).
        """
        try:
            if document["v"] != CHAIN_VERSION:
                raise ValueError(f"unknown chain version {document['v']!r}")
            at = datetime.strptime(document["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            details = document["details"]
            if not isinstance(details, dict):
                raise ValueError("details is not an object")
            return cls(
                seq=int(document["seq"]),
                at=at,
                actor=str(document["actor"]),
                action=str(document["action"]),
                target=document["target"],
                outcome=str(document["outcome"]),
                request_id=document["request_id"],
                prev_hash=str(document["prev_hash"]),
                hash=str(document["hash"]),
                details=details,
                id=document.get("id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            seq = document.get("seq") if isinstance(document, Mapping) else None
            raise AuditChainBroken(
                seq if isinstance(seq, int) else 0, None, f"unreadable event: {exc}"
            ) from exc


def _hashed_fields(event: ChainedAuditEvent) -> dict[str, Any]:
    return {
        "v": CHAIN_VERSION,
        "seq": event.seq,
        "at": format_time(event.at),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }


def _digest(fields: Mapping[str, Any]) -> str:
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """The last event of the chain as the database's head row records it."""

    seq: int
    hash: str


class AuditChainBroken(TrustdError):
    """The chain does not hold at event `seq` (row `event_id`): the first one that fails."""

    title = "Audit chain broken"

    def __init__(self, seq: int, event_id: int | None, reason: str) -> None:
        where = f"event {seq}" + (f" (row id {event_id})" if event_id is not None else "")
        super().__init__(f"{where}: {reason}")
        self.seq = seq
        self.event_id = event_id
        self.reason = reason


class ChainVerifier:
    """Checks events fed in chain order, one at a time (an export may not fit in memory).

    `start_hash` is the hash the first event must follow: the genesis for a whole chain, the
    last hash a SIEM already holds for an incremental export.
    """

    def __init__(self, start_hash: str | None = GENESIS_HASH, start_seq: int = 0) -> None:
        self._expected_prev = start_hash
        self._last_seq = start_seq
        self.count = 0
        self.first_prev: str | None = None

    @property
    def last_hash(self) -> str | None:
        return self._expected_prev

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def feed(self, event: ChainedAuditEvent) -> None:
        """Check the next event.

        Raises:
            AuditChainBroken: it does not follow the previous one (a gap or repeat in `seq`,
                a `prev_hash` that is not the previous hash), or its hash is not the hash of
                its own fields (the event was edited).
        """
        if self.count == 0 and self._expected_prev is None:
            # An export that starts mid-chain: its first `prev_hash` is the anchor to check
            # against the copy already held.
            self._expected_prev = event.prev_hash
            self._last_seq = event.seq - 1
            self.first_prev = event.prev_hash
        if event.seq != self._last_seq + 1:
            raise AuditChainBroken(
                self._last_seq + 1,
                None,
                f"missing: the chain goes from event {self._last_seq} to event {event.seq}",
            )
        if event.prev_hash != self._expected_prev:
            raise AuditChainBroken(
                event.seq, event.id, "prev_hash is not the hash of the event before it"
            )
        if event.computed_hash() != event.hash:
            raise AuditChainBroken(
                event.seq, event.id, "its fields do not match its hash (the event was changed)"
            )
        self._expected_prev = event.hash
        self._last_seq = event.seq
        self.count += 1

    def finish(self, head: ChainHead | None) -> None:
        """Check that the chain ends where the head row says it does.

        Raises:
            AuditChainBroken: events are missing at the end, or the last one differs.
        """
        if head is None:
            return
        if head.seq != self._last_seq:
            raise AuditChainBroken(
                self._last_seq + 1 if head.seq > self._last_seq else head.seq,
                None,
                f"the chain head is event {head.seq} but the events end at {self._last_seq}",
            )
        if head.seq > 0 and head.hash != self._expected_prev:
            raise AuditChainBroken(
                head.seq, None, "the last event's hash is not the chain head's hash"
            )
