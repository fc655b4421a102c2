"""`trustd identity`: quarantine an identity on every node, release it, list the
quarantined, and show what trustd knows of one SPIFFE ID."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import columns, command_group, emit, fail, listing, record, render_table

app = command_group(
    help="Identities: quarantine (cut off on every node) and release.", no_args_is_help=True
)

ID_ARGUMENT = typer.Argument(help="The SPIFFE ID", show_default=False)
QUARANTINE_COLUMNS = columns(
    ("spiffe id", "spiffe_id"),
    ("by", "quarantined_by"),
    ("since", "quarantined_at"),
    ("until", lambda q: q["until"] or "released"),
    ("reason", "reason"),
)
CERTIFICATE_COLUMNS = columns(
    ("serial", "serial"),
    ("status", "status"),
    ("not after", "not_after"),
    ("reason", "revocation_reason"),
)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_instant(value: str, option: str, *, past: bool = False) -> str:
    """An RFC 3339 instant with a time zone, or a duration (`30m`, `2h`, `7d`) from now:
    ahead of it, or back from it when `past`."""
    found = _DURATION.match(value)
    if found:
        delta = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
        return (datetime.now(UTC) + (-delta if past else delta)).isoformat()
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r}: give an RFC 3339 time or a duration such as 30m, 2h, 7d")
    if instant.tzinfo is None:
        fail(f"{option} {value!r}: give the time zone (e.g. 2026-12-31T12:00:00Z)")
    return instant.isoformat()


def parse_until(value: str) -> str:
    """An RFC 3339 instant with a time zone, or a duration from now (`30m`, `2h`, `7d`)."""
    return parse_instant(value, "--until")


def describe(quarantine: dict[str, Any]) -> str:
    until = quarantine["until"] or "released"
    return f"quarantined until {until} by {quarantine['quarantined_by']}: {quarantine['reason']}"


@app.command("quarantine")
def quarantine(
    spiffe_id: Annotated[str, ID_ARGUMENT],
    reason: Annotated[str, typer.Option(help="Why (shown to the workload and in the audit)")],
    until: Annotated[
        str | None,
        typer.Option(help="RFC 3339 time or a duration (30m, 2h, 7d); none: until released"),
    ] = None,
) -> None:
    """Cut an identity off on every node: the kernel drops its traffic, new and established;
    agents stop serving and minting its SVIDs (the Workload API refuses it with the reason)."""
    shared = connection()
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "reason": reason}
    if until is not None:
        body["until"] = parse_until(until)
    made = shared.json("POST", "/v1/admin/identities/quarantine", json=body)
    emit(shared.output, made, lambda: typer.echo(f"{made['spiffe_id']} {describe(made)}"))


@app.command("release")
def release(spiffe_id: Annotated[str, ID_ARGUMENT]) -> None:
    """Release a quarantined identity: every node lets it back in and mints its SVIDs."""
    shared = connection()
    released = shared.json("POST", "/v1/admin/identities/release", json={"spiffe_id": spiffe_id})
    emit(
        shared.output,
        released,
        lambda: typer.echo(f"released {released['quarantine']['spiffe_id']}"),
    )


@app.command("list")
def list_() -> None:
    """The quarantined identities: who quarantined them, why and until when."""
    shared = connection()
    found = shared.json("GET", "/v1/admin/identities/quarantined")
    listing(shared.output, found, QUARANTINE_COLUMNS, "no identity is quarantined")


@app.command("show")
def show(spiffe_id: Annotated[str, ID_ARGUMENT]) -> None:
    """One identity: its SVIDs, revoked serials, quarantine and the nodes that applied it."""
    shared = connection()
    found = shared.json("GET", "/v1/admin/identities", params={"spiffe_id": spiffe_id})

    def text() -> None:
        held = found["quarantine"]
        record(
            shared.output,
            {
                "spiffe id": found["spiffe_id"],
                "entries": found["entries"],
                "quarantine": describe(held) if held else "none",
                "applied by": found["applied_by"] if held else None,
            },
        )
        for title, rows in (("svids", found["svids"]), ("revoked", found["revoked"])):
            typer.echo(f"\n{title}:")
            typer.echo(render_table(rows, CERTIFICATE_COLUMNS))

    emit(shared.output, found, text)
