"""`trustd audit`: the tamper-evident audit log, verified here (not by the server whose log
it is) and exported as JSON lines for a SIEM."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import command_group, emit, fail, progress
from trustd.domain.audit import (
    GENESIS_HASH,
    HEAD_HASH_HEADER,
    HEAD_SEQ_HEADER,
    AuditChainBroken,
    ChainedAuditEvent,
    ChainHead,
    ChainVerifier,
)

app = command_group(help="The audit log and its hash chain.", no_args_is_help=True)

EXPORT = "/v1/admin/audit/export"


def _events(lines: Iterable[str]) -> Iterable[ChainedAuditEvent]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditChainBroken(0, None, f"line {number} is not JSON: {exc.msg}") from exc
        if not isinstance(document, dict):
            raise AuditChainBroken(0, None, f"line {number} is not a JSON object")
        yield ChainedAuditEvent.from_document(document)


@app.command("verify")
def verify(
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Verify an export (`-` for stdin) instead of the server's log"),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="For an export that starts mid-chain: the hash of the event before its "
            "first (the last one already verified); default: trust the export's first "
            "prev_hash"
        ),
    ] = None,
) -> None:
    """Check the audit chain: every event's hash, each event following the one before, and
    (from the server) that the chain reaches the head. Exits 1 naming the first broken
    event."""
    shared = connection()
    head: ChainHead | None = None
    if file is None:
        response = shared.request("GET", EXPORT)
        head = ChainHead(int(response.headers[HEAD_SEQ_HEADER]), response.headers[HEAD_HASH_HEADER])
        lines: Iterable[str] = response.text.splitlines()
        verifier = ChainVerifier()
    else:
        lines = sys.stdin if str(file) == "-" else file.open(encoding="utf-8")
        verifier = ChainVerifier(start_hash=anchor)
    try:
        for event in _events(lines):
            if verifier.count == 0 and file is not None and anchor is None and event.seq == 1:
                # A chain that starts at its first event has nothing to trust: the genesis.
                verifier = ChainVerifier(start_hash=GENESIS_HASH)
            verifier.feed(event)
        verifier.finish(head)
    except AuditChainBroken as broken:
        fail(f"audit chain broken at {broken}")
    if verifier.first_prev is not None:
        progress(f"the export starts after an event with hash {verifier.first_prev}")
    document: dict[str, Any] = {
        "intact": True,
        "events": verifier.count,
        "last_seq": verifier.last_seq,
        "last_hash": verifier.last_hash,
    }
    emit(
        shared.output,
        document,
        lambda: typer.echo(
            f"audit chain intact: {verifier.count} events, "
            f"last event {verifier.last_seq} hash {verifier.last_hash}"
        ),
    )


@app.command("export")
def export(
    after: Annotated[
        int, typer.Option(min=0, help="Only the events after this seq (an incremental export)")
    ] = 0,
) -> None:
    """Write the audit events as JSON lines with their chain (seq, prev_hash, hash), for a
    SIEM to store and verify (`trustd audit verify --file`)."""
    response = connection().request("GET", EXPORT, params={"after": after})
    progress(
        f"chain head: event {response.headers[HEAD_SEQ_HEADER]} "
        f"hash {response.headers[HEAD_HASH_HEADER]}"
    )
    sys.stdout.write(response.text)
