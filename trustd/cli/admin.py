"""`trustd admin`: admin API bearer tokens and admin web UI accounts."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    fail,
    human_time,
    invoked_as,
    listing,
    progress,
)
from trustd.roles import Role

app = command_group(help="Admin API tokens and admin web UI accounts.", no_args_is_help=True)
token_app = command_group(
    help="Admin API bearer tokens (for nodes' join tokens see `trustd token`).",
    no_args_is_help=True,
)
user_app = command_group(help="Admin web UI accounts (sign in at /ui/).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")

TOKEN_COLUMNS = columns(
    ("id", "id"),
    ("name", "name"),
    ("role", "role"),
    ("created by", "created_by"),
    ("created", "created_at"),
    ("expires", "expires_at"),
    ("revoked", "revoked_at"),
)
USER_COLUMNS = columns(
    ("username", "username"),
    ("role", "role"),
    ("totp", "totp"),
    ("disabled", "disabled"),
    ("created", "created_at"),
    ("last sign-in", "last_login_at"),
)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="What the token is for")] = "admin",
    role: Annotated[
        Role, typer.Option(help="viewer, operator or admin (least privilege by default)")
    ] = Role.VIEWER,
    ttl: Annotated[
        int | None,
        typer.Option(help="Lifetime in seconds; default: the server's admin_token_ttl (8 h)"),
    ] = None,
) -> None:
    """Create an admin token and print it (it is shown only once)."""
    shared = connection()
    body: dict[str, Any] = {"name": name, "role": role.value}
    if ttl is not None:
        body["ttl"] = ttl
    created = shared.json("POST", "/v1/admin/tokens", json=body)
    expires = human_time(created["expires_at"])
    progress(
        f"created token {created['id']} ({created['role']}, expires {expires}); "
        "it is shown only once:"
    )
    emit(shared.output, created, lambda: typer.echo(created["token"]))


@token_app.command("list")
def token_list() -> None:
    """List admin tokens (never their secrets)."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/tokens"),
        TOKEN_COLUMNS,
        f"no admin tokens; create one with: {invoked_as()} admin token create --name NAME",
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (the part after 'trustd.')")],
) -> None:
    """Revoke an admin token at once."""
    connection().request("DELETE", f"/v1/admin/tokens/{token_id}")
    typer.echo(f"revoked {token_id}")


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="Lower-case letters, digits, . _ -")],
    role: Annotated[Role, typer.Option(help="viewer, operator or admin")] = Role.VIEWER,
    password: Annotated[
        str,
        typer.Option(
            envvar="TRUSTD_USER_PASSWORD",
            help="At least 12 characters; prompted for on a terminal when not given",
        ),
    ] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    totp: Annotated[bool, typer.Option("--totp", help="Also require a TOTP code")] = False,
) -> None:
    """Create a UI account; with --totp, print the enrolment URI (shown only once)."""
    password = _read_password(password, password_stdin)
    shared = connection()
    body = {"username": username, "password": password, "role": role.value, "totp": totp}
    progress(f"creating UI user {username} ({role.value})")
    user = shared.json("POST", "/v1/admin/users", json=body)

    def text() -> None:
        if user.get("totp_uri"):
            progress("add this to an authenticator app now; it is shown only once:")
            typer.echo(user["totp_uri"])
        typer.echo(f"created {user['username']} ({user['role']}); sign in at /ui/login")

    emit(shared.output, user, text)


def _read_password(given: str, from_stdin: bool) -> str:
    # A password on the command line lands in shell history and `ps`: stdin or a prompt.
    if from_stdin:
        if given:
            fail("give the password either with --password or on stdin, not both")
        return sys.stdin.readline().rstrip("\r\n")
    if given:
        return given
    if not sys.stdin.isatty():
        fail("no terminal to ask the password on: pipe it with --password-stdin")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_app.command("list")
def user_list() -> None:
    """List UI accounts."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/users"),
        USER_COLUMNS,
        f"no UI accounts yet; create one with: {invoked_as()} admin user create NAME --role admin",
    )


@user_app.command("disable")
def user_disable(
    username: Annotated[str, typer.Argument(help="The account to disable")],
) -> None:
    """Disable a UI account and end its sessions at once."""
    shared = connection()
    user = shared.json("POST", f"/v1/admin/users/{username}/disable")
    emit(shared.output, user, lambda: typer.echo(f"disabled {username}; its sessions have ended"))
