"""The audit hash chain's rules, on events built in memory: what each tampering looks like
to the verifier, and that an exported line parses back to the event it came from."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustd.domain.audit import (
    GENESIS_HASH,
    AuditChainBroken,
    ChainedAuditEvent,
    ChainHead,
    ChainVerifier,
    canonical_details,
)

T0 = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)


def chain(n: int) -> list[ChainedAuditEvent]:
    events, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = ChainedAuditEvent(
            seq=seq,
            at=T0 + timedelta(seconds=seq),
            actor="token:1",
            action="svid:x509:issued",
            target=f"spiffe://example.org/w{seq}",
            outcome="success",
            request_id=None,
            prev_hash=prev,
            hash="",
            details={"serial": f"{seq:04x}"},
            id=100 + seq,
        )
        event = replace(event, hash=event.computed_hash())
        events.append(event)
        prev = event.hash
    return events


def verify(events: list[ChainedAuditEvent], head: ChainHead | None = None) -> int:
    verifier = ChainVerifier()
    for event in events:
        verifier.feed(event)
    verifier.finish(head)
    return verifier.count


def test_an_untouched_chain_verifies_to_its_head() -> None:
    events = chain(5)
    assert verify(events, ChainHead(5, events[-1].hash)) == 5
    assert verify([], ChainHead(0, GENESIS_HASH)) == 0


def test_an_edited_field_is_named_at_its_event() -> None:
    events = chain(5)
    events[2] = replace(events[2], outcome="denied")
    with pytest.raises(AuditChainBroken) as caught:
        verify(events)
    assert (caught.value.seq, caught.value.event_id) == (3, 103)
    assert str(caught.value).startswith("event 3 (row id 103): its fields do not match")


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    events = chain(5)
    forged = replace(events[2], actor="someone-else")
    events[2] = replace(forged, hash=forged.computed_hash())
    with pytest.raises(AuditChainBroken) as caught:
        verify(events)
    assert caught.value.seq == 4 and "prev_hash" in caught.value.reason


@pytest.mark.parametrize(
    ("tamper", "broken_at"),
    [
        (lambda e: e[:2] + e[3:], 3),  # a deleted event
        (lambda e: [e[0], e[2], e[1], *e[3:]], 2),  # two swapped
        (lambda e: [*e[:2], e[1], *e[2:]], 3),  # a repeated event
        (lambda e: e[1:], 1),  # the first one gone
    ],
)
def test_missing_reordered_and_repeated_events_break_the_chain(tamper, broken_at: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuditChainBroken) as caught:
        verify(tamper(chain(5)))
    assert caught.value.seq == broken_at


def test_a_cut_tail_is_caught_against_the_head() -> None:
    events = chain(5)
    with pytest.raises(AuditChainBroken) as caught:
        verify(events[:3], ChainHead(5, events[-1].hash))
    assert caught.value.seq == 4 and "head is event 5" in caught.value.reason
    with pytest.raises(AuditChainBroken):
        verify(events, ChainHead(5, "f" * 64))


def test_an_export_starting_mid_chain_is_checked_from_its_anchor() -> None:
    events = chain(5)
    trusted = ChainVerifier(start_hash=None)
    for event in events[2:]:
        trusted.feed(event)
    assert trusted.first_prev == events[1].hash and trusted.count == 3
    anchored = ChainVerifier(start_hash=events[0].hash, start_seq=1)
    with pytest.raises(AuditChainBroken) as caught:
        anchored.feed(events[2])
    assert caught.value.seq == 2


def test_an_exported_line_parses_back_to_its_event() -> None:
    for event in chain(3):
        assert ChainedAuditEvent.from_document(event.document()) == event
    line = chain(1)[0].document()
    with pytest.raises(AuditChainBroken, match="unreadable"):
        ChainedAuditEvent.from_document({**line, "v": 2})
    with pytest.raises(AuditChainBroken, match="unreadable"):
        ChainedAuditEvent.from_document({k: v for k, v in line.items() if k != "at"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(details=st.dictionaries(st.text(), json_values, max_size=4), target=st.text())
def test_the_hash_survives_the_json_round_trip(details: dict[str, object], target: str) -> None:
    event = replace(chain(1)[0], details=canonical_details(details), target=target)
    event = replace(event, hash=event.computed_hash())
    assert ChainedAuditEvent.from_document(event.document()).computed_hash() == event.hash
