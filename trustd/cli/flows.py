"""`trustd flows`: the flows the nodes observed, one aligned line each (Hubble's `observe`
is the model): when, who to whom on which port, the verdict, why, and how many events.
`--follow` keeps printing the flows stored since, polling `GET /v1/flows` with its cursor."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.identity import parse_instant
from trustd.cli.output import Output, columns, listing, matching, nothing, render_table
from trustd.domain.flows import Reason, Verdict

FLOWS = "/v1/flows"
# How often --follow asks for what was stored since; agents report every few seconds.
FOLLOW_INTERVAL = 2.0


def _end(identity: str | None, address: str) -> str:
    """The identity, or for an address in no entry the address (an IPv6 one bracketed, as
    in a URI, RFC 3986 §3.2.2, so that the port after it reads as one)."""
    if identity is not None:
        return identity
    return f"[{address}]" if ":" in address else address


FLOW_COLUMNS = columns(
    ("time", "last_seen"),
    ("source", lambda f: _end(f["source"], f["source_address"])),
    ("", lambda f: "→"),
    (
        "destination",
        lambda f: (
            f"{_end(f['destination'], f['destination_address'])}"
            f":{f['destination_port']}/{f['protocol']}"
        ),
    ),
    ("verdict", lambda f: f["verdict"].upper()),
    ("reason", "reason"),
    ("count", "count"),
    (
        "observer",
        lambda f: (
            f["observer"] + (f" {f['l7']['method']} {f['l7']['path']}" if f.get("l7") else "")
        ),
    ),
)


def _print_lines(output: Output, flows: Sequence[Mapping[str, Any]], header: bool) -> None:
    """The flows oldest first: for people aligned lines (the header once), for scripts one
    JSON document per line."""
    if output is not Output.TABLE:
        for flow in flows:
            typer.echo(json.dumps(flow, sort_keys=True))
        return
    if not flows:
        return
    lines = render_table(flows, FLOW_COLUMNS).splitlines()
    typer.echo("\n".join(lines if header else lines[1:]))


def flows(
    source: Annotated[
        str | None,
        typer.Option("--from", help="Source SPIFFE ID, or a path prefix ending in /"),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option("--to", help="Destination SPIFFE ID, or a path prefix ending in /"),
    ] = None,
    verdict: Annotated[Verdict | None, typer.Option(help="What happened to the connection")] = None,
    reason: Annotated[Reason | None, typer.Option(help="Why it was decided so")] = None,
    node: Annotated[str | None, typer.Option(help="The reporting node's SPIFFE ID")] = None,
    since: Annotated[
        str | None, typer.Option(help="Last seen since: a duration back (10m, 2h) or RFC 3339")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="The newest this many")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new flows until interrupted")
    ] = False,
) -> None:
    """Observed flows, newest last: time, source → destination:port/protocol, verdict,
    reason, count. A source or destination in no entry shows as its address."""
    shared = connection()
    filters = {
        "from": source,
        "to": destination,
        "verdict": str(verdict) if verdict else None,
        "reason": str(reason) if reason else None,
        "node": node,
        "since": parse_instant(since, "--since", past=True) if since else None,
    }
    params = {k: v for k, v in filters.items() if v is not None}
    page = shared.json("GET", FLOWS, params={**params, "limit": limit})
    newest_last = list(reversed(page["flows"]))
    if not follow:
        empty = f"No flows{matching({**filters, 'since': since})}."
        listing(shared.output, newest_last, FLOW_COLUMNS, empty, document=newest_last)
        return
    cursor = int(page["cursor"])
    _print_lines(shared.output, newest_last, header=True)
    printed = bool(newest_last)
    if not printed and shared.output is Output.TABLE:
        nothing("No flows yet; waiting for new ones (Ctrl-C to stop).")
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            while True:
                page = shared.json("GET", FLOWS, params={**params, "after": cursor, "limit": 1000})
                _print_lines(shared.output, page["flows"], header=not printed)
                printed = printed or bool(page["flows"])
                cursor = int(page["cursor"])
                if len(page["flows"]) < 1000:
                    break
    except KeyboardInterrupt:
        return
