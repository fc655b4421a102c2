"""The `trustd` command."""

from __future__ import annotations

import json
import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from cryptography.hazmat.primitives import serialization

from pki.ca import create_csr
from pki.errors import TrustdError
from pki.keys import KeyType, generate_private_key
from trustd.client import AdminClient
from trustd.services.auth import Role

app = typer.Typer(
    help="trustd: workload identities, the CA behind them, and who may talk to whom.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(help="Administration.", no_args_is_help=True)
token_app = typer.Typer(help="Admin bearer tokens.", no_args_is_help=True)
ca_app = typer.Typer(help="The certificate authority.", no_args_is_help=True)
svid_app = typer.Typer(help="Issue SVIDs as an administrator.", no_args_is_help=True)
bundle_app = typer.Typer(help="The trust bundle.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
admin_app.add_typer(token_app, name="token")
app.add_typer(ca_app, name="ca")
app.add_typer(svid_app, name="svid")
app.add_typer(bundle_app, name="bundle")
acme_app = typer.Typer(
    help="The ACME server: accounts, orders, certificates.", no_args_is_help=True
)
eab_app = typer.Typer(help="External Account Binding keys for ACME.", no_args_is_help=True)
app.add_typer(acme_app, name="acme")
acme_app.add_typer(eab_app, name="eab")


class OnOff(StrEnum):
    ON = "on"
    OFF = "off"


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _progress(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.BRIGHT_BLACK)


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="TRUSTD_SERVER", help="Server URL; default: this host's admin socket"
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="TRUSTD_ADMIN_TOKEN", help="Admin token")
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option("--ca-bundle", envvar="TRUSTD_CA_BUNDLE", help="PEM roots to verify --server"),
]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="TRUSTD_DATA_DIR", help="Where the admin socket is")
]


def _call(
    server: str | None,
    token: str | None,
    ca_bundle: Path | None,
    data_dir: Path,
    method: str,
    path: str,
    **kwargs: Any,
) -> httpx.Response:
    """One admin request; any failure ends the command with the server's explanation."""
    try:
        with AdminClient(server, token, ca_bundle, data_dir / "admin.sock") as client:
            return client.request(method, path, **kwargs)
    except TrustdError as exc:
        _fail(str(exc))


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option(envvar="TRUSTD_CONFIG", help="TOML settings file")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT [127.0.0.1:8443]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [var]")] = None,
    tls: Annotated[
        OnOff | None, typer.Option(help="'off' behind a TLS-terminating proxy [on]")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes [1]")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations first")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the trustd service (HTTPS API + admin socket)."""
    from trustd import bootstrap, server
    from trustd.logs import configure_logging
    from trustd.services.container import build_services
    from trustd.settings import load_settings

    if config is not None:
        os.environ["TRUSTD_CONFIG"] = str(config)
    try:
        settings = load_settings(
            listen=listen,
            data_dir=data_dir,
            tls=None if tls is None else tls is OnOff.ON,
            workers=workers,
        )
        configure_logging(log_level)
        bootstrap.prepare_data_dir(settings.data_dir)
        if migrate:
            _progress(f"migrating database {_redact(settings.resolved_database_url)}")
            bootstrap.migrate(settings.resolved_database_url)
        services = build_services(settings)
        report = bootstrap.initialise(services)
        if report.created_ca:
            _progress(f"created the CA for trust domain {settings.trust_domain}")
        services.ca.load()
        bundle_path = bootstrap.write_bundle_file(services)
        services.engine.dispose()
        tcp, uds = server.bind_sockets(settings)
    except TrustdError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc}")

    def ready() -> None:
        _banner(settings.tls, settings.listen, settings.trust_domain, bundle_path, report)

    server.run(settings, tcp, uds, log_level, ready)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def _banner(tls: bool, listen: str, td: str, bundle: Path, report: Any) -> None:
    me = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0].endswith("trustd") else "trustd"
    scheme = "https" if tls else "http"
    url = f"{scheme}://{listen}"
    lines = [
        "",
        "trustd is running",
        f"  URL:           {url}",
        f"  trust domain:  {td}",
        f"  trust bundle:  {bundle.resolve()}",
    ]
    if report.bootstrap_token:
        lines += [
            "  bootstrap admin token (shown once, valid 24 h):",
            f"    {report.bootstrap_token}",
        ]
    curl_ca = f"--cacert {bundle} " if tls else ""
    lines += [
        "",
        "Next, in another terminal:",
        f"  {me} svid x509 --spiffe-id spiffe://{td}/demo --out ./demo",
        f"  {me} ca show",
        f"  curl {curl_ca}{url}/v1/bundle",
        "",
    ]
    typer.echo("\n".join(lines))


@app.command()
def init(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [var]")] = None,
) -> None:
    """Migrate the database and create the CA without starting the server."""
    from trustd import bootstrap
    from trustd.services.container import build_services
    from trustd.settings import load_settings

    try:
        settings = load_settings(data_dir=data_dir)
        bootstrap.prepare_data_dir(settings.data_dir)
        bootstrap.migrate(settings.resolved_database_url)
        services = build_services(settings)
        report = bootstrap.initialise(services)
        services.ca.load()
        bundle = bootstrap.write_bundle_file(services)
    except TrustdError as exc:
        _fail(str(exc))
    typer.echo(f"trust domain {settings.trust_domain}; bundle at {bundle}")
    if report.bootstrap_token:
        typer.echo(f"bootstrap admin token (shown once, valid 24 h): {report.bootstrap_token}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="What the token is for")] = "admin",
    role: Annotated[Role, typer.Option(help="viewer, operator or admin")] = Role.ADMIN,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds; default none")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create an admin token and print it (it is shown only once)."""
    body: dict[str, Any] = {"name": name, "role": role.value}
    if ttl is not None:
        body["ttl"] = ttl
    created = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/tokens", json=body
    ).json()
    _progress(f"created token {created['id']} ({created['role']}); it is shown only once:")
    typer.echo(created["token"])


@token_app.command("list")
def token_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List admin tokens (never their secrets)."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/tokens").json())


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (the part after 'trustd.')")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Revoke an admin token at once."""
    _call(server, token, ca_bundle, data_dir, "DELETE", f"/v1/admin/tokens/{token_id}")
    typer.echo(f"revoked {token_id}")


@ca_app.command("show")
def ca_show(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Show the active authorities, their expiry and the bundle sequence."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/ca").json())


@svid_app.command("x509")
def svid_x509(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    out: Annotated[Path, typer.Option(help="Directory for svid.pem, key.pem, bundle.pem")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
    dns_name: Annotated[list[str] | None, typer.Option("--dns-name", help="Repeatable")] = None,
    key_type: Annotated[KeyType, typer.Option(help="Key to generate here")] = KeyType.EC_P256,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Generate a key here, have trustd sign it as an X509-SVID, write the files.

    The private key never leaves this machine: only a CSR is sent.
    """
    key = generate_private_key(key_type)
    body: dict[str, Any] = {
        "spiffe_id": spiffe_id,
        "csr": create_csr(key),
        "dns_names": dns_name or [],
    }
    if ttl is not None:
        body["ttl"] = ttl
    issued = _call(server, token, ca_bundle, data_dir, "POST", "/v1/svid/x509", json=body).json()
    out.mkdir(parents=True, exist_ok=True)
    (out / "svid.pem").write_text(issued["certificate"] + "".join(issued["intermediates"]))
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (out / "bundle.pem").write_text(issued["bundle"])
    typer.echo(
        f"{issued['spiffe_id']} serial {issued['serial']} valid until {issued['not_after']}\n"
        f"wrote {out / 'svid.pem'}, {out / 'key.pem'}, {out / 'bundle.pem'}"
    )


@svid_app.command("jwt")
def svid_jwt(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    audience: Annotated[list[str], typer.Option("--audience", help="Repeatable; required")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Mint a JWT-SVID and print it."""
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "audience": audience}
    if ttl is not None:
        body["ttl"] = ttl
    minted = _call(server, token, ca_bundle, data_dir, "POST", "/v1/svid/jwt", json=body).json()
    _progress(
        f"{minted['spiffe_id']} for {', '.join(minted['audience'])}, expires {minted['expires_at']}"
    )
    typer.echo(minted["token"])


class BundleFormat(StrEnum):
    PEM = "pem"
    JWKS = "jwks"


@bundle_app.command("show")
def bundle_show(
    format: Annotated[
        BundleFormat, typer.Option(help="pem, or jwks (SPIFFE bundle)")
    ] = BundleFormat.PEM,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Print the trust bundle."""
    response = _call(
        server, token, ca_bundle, data_dir, "GET", "/v1/bundle", params={"format": format.value}
    )
    if format is BundleFormat.JWKS:
        _print_json(response.json())
    else:
        typer.echo(response.text, nl=False)


@acme_app.command("accounts")
def acme_accounts(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List ACME accounts."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/acme/accounts").json())


@acme_app.command("deactivate")
def acme_deactivate(
    account_id: Annotated[str, typer.Argument(help="Account id (from `trustd acme accounts`)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Deactivate an ACME account: it can no longer order or revoke."""
    _call(
        server,
        token,
        ca_bundle,
        data_dir,
        "POST",
        f"/v1/admin/acme/accounts/{account_id}/deactivate",
    )
    typer.echo(f"deactivated ACME account {account_id}")


@acme_app.command("orders")
def acme_orders(
    account: Annotated[str | None, typer.Option(help="Only this account's orders")] = None,
    status: Annotated[str | None, typer.Option(help="pending, ready, valid, invalid")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List ACME orders, newest first."""
    params = {k: v for k, v in {"account_id": account, "status": status}.items() if v}
    response = _call(
        server, token, ca_bundle, data_dir, "GET", "/v1/admin/acme/orders", params=params
    )
    _print_json(response.json())


@acme_app.command("certificates")
def acme_certificates(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List certificates issued through ACME, newest first."""
    path = "/v1/admin/acme/certificates"
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", path).json())


@acme_app.command("prune")
def acme_prune(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Expire stale pending orders now and delete old finished ones."""
    result = _call(server, token, ca_bundle, data_dir, "POST", "/v1/admin/acme/prune").json()
    typer.echo(f"expired {result['expired']} orders, deleted {result['deleted']}")


@eab_app.command("create")
def eab_create(
    label: Annotated[str, typer.Option(help="Who the key is for")],
    dns_suffix: Annotated[
        list[str] | None, typer.Option("--dns-suffix", help="Allowed DNS suffix; repeatable")
    ] = None,
    ip_network: Annotated[
        list[str] | None, typer.Option("--ip-network", help="Allowed CIDR; repeatable")
    ] = None,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds; default none")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create an EAB key id and MAC key for an ACME client (shown only once)."""
    body: dict[str, Any] = {
        "label": label,
        "dns_suffixes": dns_suffix or [],
        "ip_networks": ip_network or [],
    }
    if ttl is not None:
        body["ttl"] = ttl
    created = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/acme/eab-keys", json=body
    ).json()
    _progress(
        f"created EAB key {created['id']}; the MAC key is shown only once. Use them as "
        f"`certbot --eab-kid {created['id']} --eab-hmac-key <hmac_key>` or "
        f"`lego --eab --kid {created['id']} --hmac <hmac_key>`"
    )
    _print_json(created)


@eab_app.command("list")
def eab_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List EAB keys (never their MAC keys)."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/acme/eab-keys").json())


@eab_app.command("revoke")
def eab_revoke(
    key_id: Annotated[str, typer.Argument(help="EAB key id")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Revoke an EAB key: no new account can bind with it."""
    _call(server, token, ca_bundle, data_dir, "DELETE", f"/v1/admin/acme/eab-keys/{key_id}")
    typer.echo(f"revoked EAB key {key_id}")


def main() -> None:
    app()
