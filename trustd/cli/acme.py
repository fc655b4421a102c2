"""`trustd acme`: the ACME server's accounts, orders, certificates and External Account
Binding keys (RFC 8555 §7.3.4)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    invoked_as,
    listing,
    matching,
    progress,
    record,
)

app = command_group(help="The ACME server: accounts, orders, certificates.", no_args_is_help=True)
eab_app = command_group(help="External Account Binding keys for ACME.", no_args_is_help=True)
app.add_typer(eab_app, name="eab")

ACCOUNT_COLUMNS = columns(
    ("id", "id"),
    ("status", "status"),
    ("contact", "contact"),
    ("eab key", "eab_key_id"),
    ("created", "created_at"),
)
ORDER_COLUMNS = columns(
    ("id", "id"),
    ("account", "account_id"),
    ("status", "status"),
    ("identifiers", "identifiers"),
    ("profile", "profile"),
    ("expires", "expires"),
    ("certificate", "certificate_serial"),
)
CERTIFICATE_COLUMNS = columns(
    ("serial", "serial"),
    ("account", "account_id"),
    ("identifiers", "identifiers"),
    ("status", "status"),
    ("not after", "not_after"),
)
EAB_COLUMNS = columns(
    ("id", "id"),
    ("label", "label"),
    ("dns suffixes", "dns_suffixes"),
    ("ip networks", "ip_networks"),
    ("expires", "expires_at"),
    ("revoked", "revoked_at"),
)


@app.command("accounts")
def accounts() -> None:
    """List ACME accounts."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/acme/accounts"),
        ACCOUNT_COLUMNS,
        "no ACME accounts yet; ACME clients register at the server's /acme/directory",
    )


@app.command("deactivate")
def deactivate(
    account_id: Annotated[str, typer.Argument(help="Account id (from `trustd acme accounts`)")],
) -> None:
    """Deactivate an ACME account: it can no longer order or revoke."""
    connection().request("POST", f"/v1/admin/acme/accounts/{account_id}/deactivate")
    typer.echo(f"deactivated ACME account {account_id}")


@app.command("orders")
def orders(
    account: Annotated[str | None, typer.Option(help="Only this account's orders")] = None,
    status: Annotated[str | None, typer.Option(help="pending, ready, valid, invalid")] = None,
) -> None:
    """List ACME orders, newest first."""
    shared = connection()
    params = {k: v for k, v in {"account_id": account, "status": status}.items() if v}
    rows = shared.json("GET", "/v1/admin/acme/orders", params=params)
    empty = f"no ACME orders{matching({'account': account, 'status': status})}"
    listing(shared.output, rows, ORDER_COLUMNS, empty)


@app.command("certificates")
def certificates() -> None:
    """List certificates issued through ACME, newest first."""
    shared = connection()
    rows = shared.json("GET", "/v1/admin/acme/certificates")
    listing(shared.output, rows, CERTIFICATE_COLUMNS, "no certificates issued through ACME yet")


@app.command("prune")
def prune() -> None:
    """Expire stale pending orders now and delete old finished ones."""
    shared = connection()
    result = shared.json("POST", "/v1/admin/acme/prune")
    emit(
        shared.output,
        result,
        lambda: typer.echo(f"expired {result['expired']} orders, deleted {result['deleted']}"),
    )


@eab_app.command("create")
def eab_create(
    label: Annotated[str, typer.Option(help="Who the key is for")],
    dns_suffix: Annotated[
        list[str] | None,
        typer.Option("--dns-suffix", metavar="SUFFIX", help="Allowed DNS suffix; repeatable"),
    ] = None,
    ip_network: Annotated[
        list[str] | None,
        typer.Option("--ip-network", metavar="CIDR", help="Allowed CIDR; repeatable"),
    ] = None,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds; default none")] = None,
) -> None:
    """Create an EAB key id and MAC key for an ACME client (shown only once)."""
    shared = connection()
    body: dict[str, Any] = {
        "label": label,
        "dns_suffixes": dns_suffix or [],
        "ip_networks": ip_network or [],
    }
    if ttl is not None:
        body["ttl"] = ttl
    created = shared.json("POST", "/v1/admin/acme/eab-keys", json=body)
    progress(
        f"created EAB key {created['id']}; the MAC key is shown only once. Use them as "
        f"`certbot --eab-kid {created['id']} --eab-hmac-key <hmac_key>` or "
        f"`lego --eab --kid {created['id']} --hmac <hmac_key>`"
    )
    record(shared.output, created, ("id", "hmac_key", "label", "dns_suffixes", "ip_networks"))


@eab_app.command("list")
def eab_list() -> None:
    """List EAB keys (never their MAC keys)."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/acme/eab-keys"),
        EAB_COLUMNS,
        f"no EAB keys; create one with: {invoked_as()} acme eab create --label NAME",
    )


@eab_app.command("revoke")
def eab_revoke(key_id: Annotated[str, typer.Argument(help="EAB key id")]) -> None:
    """Revoke an EAB key: no new account can bind with it."""
    connection().request("DELETE", f"/v1/admin/acme/eab-keys/{key_id}")
    typer.echo(f"revoked EAB key {key_id}")
