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
from pki.revocation import RevocationReason
from pki.rotation import KeyKind as CaKeyKind
from trustd.client import AdminClient
from trustd.roles import Role

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
policy_app = typer.Typer(
    help="Rego policies: test, check, bundles, decisions.", no_args_is_help=True
)
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
app.add_typer(policy_app, name="policy")
cert_app = typer.Typer(help="Issued certificates and their revocation.", no_args_is_help=True)
app.add_typer(cert_app, name="cert")


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


user_app = typer.Typer(help="Admin web UI accounts (sign in at /ui/).", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="Lower-case letters, digits, . _ -")],
    role: Annotated[Role, typer.Option(help="viewer, operator or admin")] = Role.VIEWER,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="TRUSTD_USER_PASSWORD",
            help="At least 12 characters; prompted for when not given",
        ),
    ] = "",
    totp: Annotated[bool, typer.Option("--totp", help="Also require a TOTP code")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create a UI account; with --totp, print the enrolment URI (shown only once)."""
    body = {"username": username, "password": password, "role": role.value, "totp": totp}
    _progress(f"creating UI user {username} ({role.value})")
    created = _call(server, token, ca_bundle, data_dir, "POST", "/v1/admin/users", json=body)
    user = created.json()
    if user.get("totp_uri"):
        _progress("add this to an authenticator app now; it is shown only once:")
        typer.echo(user["totp_uri"])
    typer.echo(f"created {user['username']} ({user['role']}); sign in at /ui/login")


@user_app.command("list")
def user_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List UI accounts."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/users").json())


@user_app.command("disable")
def user_disable(
    username: Annotated[str, typer.Argument(help="The account to disable")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Disable a UI account and end its sessions at once."""
    path = f"/v1/admin/users/{username}/disable"
    _call(server, token, ca_bundle, data_dir, "POST", path)
    typer.echo(f"disabled {username}; its sessions have ended")


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


# --------------------------------------------------------------------------- CA rotation

KindOpt = Annotated[
    CaKeyKind,
    typer.Option("--kind", help="x509-intermediate, x509-root (cross-signed) or jwt"),
]


def _key_change(what: str, change: dict[str, Any]) -> None:
    _progress(f"{what}; bundle sequence is now {change['bundle_sequence']}")
    typer.echo(f"{change['kind']} {change['kid']} {change['status']}")


@ca_app.command("prepare")
def ca_prepare(
    kind: KindOpt = CaKeyKind.X509_INTERMEDIATE,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create the next key of a kind and publish it in the trust bundle (it signs nothing
    until `trustd ca activate`)."""
    _progress(f"preparing the next {kind} key")
    change = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/ca/prepare", json={"kind": kind}
    ).json()
    _key_change("prepared and published", change)


@ca_app.command("activate")
def ca_activate(
    kind: KindOpt = CaKeyKind.X509_INTERMEDIATE,
    kid: Annotated[str | None, typer.Option(help="A prepared key; default: the oldest")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Make the prepared key sign from now on; the active one becomes old (it stays in the
    bundle until what it signed has expired)."""
    body: dict[str, Any] = {"kind": kind}
    if kid is not None:
        body["kid"] = kid
    change = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/ca/activate", json=body
    ).json()
    _key_change("activated", change)


@ca_app.command("taint")
def ca_taint(
    kid: Annotated[str, typer.Argument(help="An old key (see `trustd ca keys`)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Mark an old key as tainted: everything it signed must be re-issued."""
    change = _call(
        server, token, ca_bundle, data_dir, "POST", f"/v1/admin/ca/keys/{kid}/taint"
    ).json()
    _key_change("tainted", change)
    _progress(f"SVIDs to re-issue: trustd ca reissue {kid}; then: trustd ca revoke {kid}")


@ca_app.command("revoke")
def ca_revoke(
    kid: Annotated[str, typer.Argument(help="A tainted key")],
    reason: Annotated[RevocationReason, typer.Option()] = RevocationReason.KEY_COMPROMISE,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Remove a tainted key from the bundle now and revoke everything it signed."""
    change = _call(
        server,
        token,
        ca_bundle,
        data_dir,
        "POST",
        f"/v1/admin/ca/keys/{kid}/revoke",
        json={"reason": reason.value},
    ).json()
    _key_change("revoked and removed from the bundle", change)


@ca_app.command("keys")
def ca_keys(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Every CA key and its status, newest first (the rotation timeline)."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/ca/keys").json())


@ca_app.command("reissue")
def ca_reissue(
    kid: Annotated[str, typer.Argument(help="A tainted key")],
    after: Annotated[str | None, typer.Option(help="Last serial of the previous batch")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """The next batch of unexpired certificates a tainted key signed."""
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    batch = _call(
        server,
        token,
        ca_bundle,
        data_dir,
        "GET",
        f"/v1/admin/ca/keys/{kid}/reissue",
        params=params,
    ).json()
    _print_json(batch)
    if len(batch) == limit:
        _progress(f"more: trustd ca reissue {kid} --after {batch[-1]['serial']}")


# --------------------------------------------------------------------------- certificates


@cert_app.command("revoke")
def cert_revoke(
    serial: Annotated[str | None, typer.Option(help="Hex serial of one certificate")] = None,
    spiffe_id: Annotated[
        str | None, typer.Option("--spiffe-id", help="Every unexpired SVID of this ID")
    ] = None,
    reason: Annotated[RevocationReason, typer.Option()] = RevocationReason.UNSPECIFIED,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Revoke a certificate or every SVID of a SPIFFE ID (published in CRLs and OCSP)."""
    if (serial is None) == (spiffe_id is None):
        _fail("give exactly one of --serial S and --spiffe-id ID")
    body: dict[str, Any] = {"reason": reason.value}
    body.update({"serial": serial} if serial is not None else {"spiffe_id": spiffe_id})
    result = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/certificates/revoke", json=body
    ).json()
    _progress(
        f"revoked {len(result['serials'])} certificate(s); revocation revision {result['revision']}"
    )
    for revoked in result["serials"]:
        typer.echo(revoked)


@cert_app.command("list")
def cert_list(
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    status: Annotated[str | None, typer.Option(help="valid or revoked")] = None,
    after: Annotated[str | None, typer.Option(help="Last serial of the previous page")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Issued certificates, ordered by serial, a page at a time."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("spiffe_id", spiffe_id), ("status", status), ("after", after)):
        if value is not None:
            params[name] = value
    page = _call(
        server, token, ca_bundle, data_dir, "GET", "/v1/admin/certificates", params=params
    ).json()
    _print_json(page)
    if len(page) == limit:
        _progress(f"more: trustd cert list --after {page[-1]['serial']}")


@cert_app.command("show")
def cert_show(
    serial: Annotated[str, typer.Argument(help="Hex serial")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """One issued certificate, its status and PEM."""
    _print_json(
        _call(server, token, ca_bundle, data_dir, "GET", f"/v1/admin/certificates/{serial}").json()
    )


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


# -- nodes, join tokens, registration entries, the agent -------------------------------

join_app = typer.Typer(help="Join tokens for node attestation.", no_args_is_help=True)
entry_app = typer.Typer(help="Registration entries.", no_args_is_help=True)
node_app = typer.Typer(help="Attested nodes.", no_args_is_help=True)
app.add_typer(join_app, name="token")
app.add_typer(entry_app, name="entry")
app.add_typer(node_app, name="node")

SelectorOpt = Annotated[list[str] | None, typer.Option("--selector", help="type:value, repeatable")]


@join_app.command("create")
def join_token_create(
    ttl: Annotated[int | None, typer.Option(help="Seconds until it expires [3600]")] = None,
    selector: SelectorOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create a single-use join token and print the command to run on the node."""
    body: dict[str, Any] = {"selectors": selector or []}
    if ttl is not None:
        body["ttl"] = ttl
    created = _call(server, token, ca_bundle, data_dir, "POST", "/v1/join-tokens", json=body).json()
    _progress(
        f"join token {created['id']} expires {created['expires_at']}; "
        f"the node will be {created['spiffe_id']}"
    )
    typer.echo(
        f"trustd agent --server {created['server_url']} --join-token {created['token']} "
        f"--ca-sha256 {created['ca_sha256'][0]} "
        "--socket /run/trustd/agent.sock --data-dir /var/lib/trustd-agent"
    )


def _entry_body(
    spiffe_id: str | None,
    parent_id: str | None,
    selector: list[str] | None,
    x509_ttl: int | None,
    jwt_ttl: int | None,
    dns_name: list[str] | None,
    hint: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "spiffe_id": spiffe_id,
        "parent_id": parent_id,
        "selectors": selector,
        "x509_ttl": x509_ttl,
        "jwt_ttl": jwt_ttl,
        "dns_names": dns_name,
        "hint": hint,
    }
    return {k: v for k, v in body.items() if v is not None}


@entry_app.command("create")
def entry_create(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    parent_id: Annotated[str, typer.Option("--parent-id", help="Node or node alias ID")],
    selector: SelectorOpt = None,
    x509_ttl: Annotated[int | None, typer.Option("--x509-ttl", help="Seconds")] = None,
    jwt_ttl: Annotated[int | None, typer.Option("--jwt-ttl", help="Seconds")] = None,
    dns_name: Annotated[list[str] | None, typer.Option("--dns-name")] = None,
    hint: Annotated[str | None, typer.Option()] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Create a registration entry."""
    body = _entry_body(spiffe_id, parent_id, selector or [], x509_ttl, jwt_ttl, dns_name, hint)
    _print_json(_call(server, token, ca_bundle, data_dir, "POST", "/v1/entries", json=body).json())


@entry_app.command("list")
def entry_list(
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    parent_id: Annotated[str | None, typer.Option("--parent-id")] = None,
    selector: Annotated[str | None, typer.Option("--selector")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List entries, optionally filtered."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in (("spiffe_id", spiffe_id), ("parent_id", parent_id), ("selector", selector)):
        if value:
            params[key] = value
    page = _call(server, token, ca_bundle, data_dir, "GET", "/v1/entries", params=params).json()
    _print_json(page)


@entry_app.command("show")
def entry_show(
    entry_id: Annotated[str, typer.Argument()],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Show one entry, with the workload addresses agents reported for its SPIFFE ID."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", f"/v1/entries/{entry_id}").json())


@entry_app.command("update")
def entry_update(
    entry_id: Annotated[str, typer.Argument()],
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    parent_id: Annotated[str | None, typer.Option("--parent-id")] = None,
    selector: SelectorOpt = None,
    x509_ttl: Annotated[int | None, typer.Option("--x509-ttl")] = None,
    jwt_ttl: Annotated[int | None, typer.Option("--jwt-ttl")] = None,
    dns_name: Annotated[list[str] | None, typer.Option("--dns-name")] = None,
    hint: Annotated[str | None, typer.Option()] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Change an entry (only the options given)."""
    body = _entry_body(spiffe_id, parent_id, selector, x509_ttl, jwt_ttl, dns_name, hint)
    path = f"/v1/entries/{entry_id}"
    _print_json(_call(server, token, ca_bundle, data_dir, "PATCH", path, json=body).json())


@entry_app.command("delete")
def entry_delete(
    entry_id: Annotated[str, typer.Argument()],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Delete an entry."""
    _call(server, token, ca_bundle, data_dir, "DELETE", f"/v1/entries/{entry_id}")
    typer.echo(f"deleted {entry_id}")


@node_app.command("list")
def node_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """List attested nodes."""
    _print_json(_call(server, token, ca_bundle, data_dir, "GET", "/v1/nodes").json())


@node_app.command("show")
def node_show(
    spiffe_id: Annotated[str, typer.Argument()],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Show one node."""
    params = {"spiffe_id": spiffe_id}
    nodes = _call(server, token, ca_bundle, data_dir, "GET", "/v1/nodes", params=params).json()
    _print_json(nodes[0])


@node_app.command("evict")
def node_evict(
    spiffe_id: Annotated[str, typer.Argument()],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Revoke the node's credentials; it must attest again."""
    body = {"spiffe_id": spiffe_id}
    _call(server, token, ca_bundle, data_dir, "POST", "/v1/nodes/evict", json=body)
    typer.echo(f"evicted {spiffe_id}")


@node_app.command("ban")
def node_ban(
    spiffe_id: Annotated[str, typer.Argument()],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Revoke the node's credentials and refuse it from attesting again."""
    body = {"spiffe_id": spiffe_id}
    _call(server, token, ca_bundle, data_dir, "POST", "/v1/nodes/ban", json=body)
    typer.echo(f"banned {spiffe_id}")


def _enforcement_mode(value: str) -> Any:
    from trustd.agent.enforcement.ebpf import Mode

    try:
        return Mode(value)
    except ValueError:
        _fail(f"--enforcement-mode must be enforce or audit, not {value!r}")


@app.command()
def agent(
    server: Annotated[str, typer.Option(envvar="TRUSTD_SERVER", help="The trustd server URL")],
    socket: Annotated[Path, typer.Option(help="Workload API socket")] = Path(
        "/run/trustd/agent.sock"
    ),
    data_dir: Annotated[Path, typer.Option(help="Agent state (node key, SVID, bundle)")] = Path(
        "/var/lib/trustd-agent"
    ),
    join_token: Annotated[
        str | None, typer.Option(envvar="TRUSTD_JOIN_TOKEN", help="First start only")
    ] = None,
    ca_sha256: Annotated[
        str | None, typer.Option(help="Pin the server's root CA on first contact")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    enforce_interface: Annotated[
        list[str] | None,
        typer.Option(help="Attach the eBPF filter to tc ingress here (IFNAME or NETNS/IFNAME)"),
    ] = None,
    enforcement_mode: Annotated[
        str, typer.Option(help="enforce: drop what policy denies; audit: count it only")
    ] = "enforce",
    bpf_pin_dir: Annotated[Path, typer.Option(help="Where the eBPF maps are pinned")] = Path(
        "/sys/fs/bpf/trustd"
    ),
    staleness_limit: Annotated[
        float | None,
        typer.Option(min=1.0, help="Seconds without trustd before enforced traffic is all denied"),
    ] = None,
    ext_authz_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT for the HTTP ext_authz endpoint")
    ] = None,
    ext_authz_grpc_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT for Envoy's gRPC ext_authz (Authorization/Check)")
    ] = None,
) -> None:
    """Run the node agent: attest, sync, serve the SPIFFE Workload API, and enforce
    verdicts (eBPF on --enforce-interface, ext_authz on --ext-authz-listen)."""
    from trustd.agent.config import CONFIG_ENV, AgentConfig

    config = AgentConfig(
        server=server.rstrip("/"),
        data_dir=data_dir,
        socket_path=socket,
        join_token=join_token,
        ca_sha256=ca_sha256,
        enforce_interfaces=tuple(enforce_interface or ()),
        enforcement_mode=_enforcement_mode(enforcement_mode),
        bpf_pin_dir=bpf_pin_dir,
        staleness_limit=staleness_limit,
        ext_authz_listen=ext_authz_listen,
        ext_authz_grpc_listen=ext_authz_grpc_listen,
    )
    # The agent runs as long as the node: exec a fresh interpreter holding only the agent
    # (trustd/agent/__main__.py), not this command line's parser stack.
    os.environ[CONFIG_ENV] = json.dumps({"config": config.to_json(), "log_level": log_level})
    os.execv(sys.executable, [sys.executable, "-m", "trustd.agent"])  # noqa: S606


RegoDirArg = Annotated[
    Path, typer.Argument(help="Directory of .rego files and data.json files", exists=True)
]


def _load_rego(directory: Path, tests: bool) -> Any:
    from policy.testing import load_directory

    try:
        return load_directory(directory, tests=tests)
    except TrustdError as exc:
        _fail(str(exc))


@policy_app.command("test")
def policy_test(
    directory: RegoDirArg = Path("rego"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing tests")] = False,
) -> None:
    """Run the test_* rules of the *_test.rego files, like `opa test`."""
    from policy.testing import run_tests

    bundle = _load_rego(directory, tests=True)
    try:
        results = run_tests(bundle.modules, bundle.data)
    except TrustdError as exc:
        _fail(f"{exc}; run `trustd policy check {directory}` for every problem")
    if not results:
        _fail(f"no test_* rules in {directory}; tests live in *_test.rego files")
    for result in results:
        if result.outcome != "pass" or verbose:
            colour = typer.colors.GREEN if result.outcome == "pass" else typer.colors.RED
            line = f"{result.outcome.upper():5} {result.name} ({result.duration_ms:.1f} ms)"
            typer.secho(line + (f": {result.detail}" if result.detail else ""), fg=colour)
    passed = sum(r.outcome == "pass" for r in results)
    failed = len(results) - passed
    typer.echo(f"PASS: {passed}/{len(results)}" + (f", FAIL: {failed}" if failed else ""))
    if failed:
        raise typer.Exit(1)


@policy_app.command("check")
def policy_check(directory: RegoDirArg = Path("rego")) -> None:
    """Report parse errors and unknown functions with file:line:col."""
    from policy.testing import check

    bundle = _load_rego(directory, tests=True)
    problems = check(bundle.modules, bundle.data)
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        _fail(f"{len(problems)} problem(s) in {directory}")
    typer.echo(f"{len(bundle.modules)} module(s) in {directory}: no problems")


@policy_app.command("push")
def policy_push(
    directory: RegoDirArg,
    activate: Annotated[bool, typer.Option(help="Activate the new revision")] = True,
    note: Annotated[str, typer.Option(help="Why this revision exists")] = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Upload a directory (modules without tests, data.json files) as a new revision."""
    bundle = _load_rego(directory, tests=False)
    _progress(f"uploading {len(bundle.modules)} module(s) from {directory}")
    body = {"modules": bundle.modules, "data": bundle.data, "activate": activate, "note": note}
    row = _call(
        server, token, ca_bundle, data_dir, "POST", "/v1/admin/policy/bundles", json=body
    ).json()
    state = "active" if row["active"] else "stored, not active"
    typer.echo(f"revision {row['revision']} ({state}), digest {row['digest'][:16]}")


@policy_app.command("list")
def policy_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Policy revisions, newest first; the active one is marked."""
    for row in _call(server, token, ca_bundle, data_dir, "GET", "/v1/admin/policy/bundles").json():
        mark = "*" if row["active"] else " "
        typer.echo(
            f"{mark} {row['revision']:>5}  {row['created_at']}  {row['created_by']}  "
            f"{len(row['modules'])} module(s)  {row['note']}"
        )


@policy_app.command("activate")
def policy_activate(
    revision: Annotated[int, typer.Argument(help="Revision number (see `policy list`)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Activate a revision on every replica."""
    path = f"/v1/admin/policy/bundles/{revision}/activate"
    row = _call(server, token, ca_bundle, data_dir, "POST", path).json()
    typer.echo(f"revision {row['revision']} is active")


@policy_app.command("rollback")
def policy_rollback(
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Re-activate the revision that was active before the current one."""
    row = _call(server, token, ca_bundle, data_dir, "POST", "/v1/admin/policy/rollback").json()
    typer.echo(f"rolled back: revision {row['revision']} is active")


@policy_app.command("diff")
def policy_diff(
    old: Annotated[int, typer.Argument(help="From revision")],
    new: Annotated[int, typer.Argument(help="To revision")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Show what changed between two revisions."""
    params = {"from": old, "to": new}
    changes = _call(
        server, token, ca_bundle, data_dir, "GET", "/v1/admin/policy/diff", params=params
    ).json()
    modules = changes["modules"]
    for name in modules["added"]:
        typer.secho(f"added   {name}", fg=typer.colors.GREEN)
    for name in modules["removed"]:
        typer.secho(f"removed {name}", fg=typer.colors.RED)
    for text in modules["changed"].values():
        typer.echo(text)
    data = changes["data"]
    for kind in ("added", "removed", "changed"):
        if data[kind]:
            typer.echo(f"data {kind}: {', '.join(data[kind])}")


@policy_app.command("export")
def policy_export(
    revision: Annotated[int, typer.Argument(help="Revision number")],
    out: Annotated[Path, typer.Option(help="Where to write the OPA bundle (.tar.gz)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Write a revision as an OPA bundle."""
    path = f"/v1/admin/policy/bundles/{revision}/export"
    out.write_bytes(_call(server, token, ca_bundle, data_dir, "GET", path).content)
    typer.echo(f"wrote {out}")


@policy_app.command("import")
def policy_import(
    bundle: Annotated[Path, typer.Argument(help="OPA bundle (.tar.gz)", exists=True)],
    activate: Annotated[bool, typer.Option(help="Activate the new revision")] = True,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Import an OPA bundle; its signature is verified by the server."""
    _progress(f"uploading {bundle} ({bundle.stat().st_size} bytes)")
    row = _call(
        server,
        token,
        ca_bundle,
        data_dir,
        "POST",
        "/v1/admin/policy/bundles/import",
        params={"activate": activate},
        content=bundle.read_bytes(),
        headers={"Content-Type": "application/gzip"},
    ).json()
    typer.echo(f"revision {row['revision']} imported" + (" and active" if row["active"] else ""))


@policy_app.command("decisions")
def policy_decisions(
    path: Annotated[str | None, typer.Option(help="e.g. trustd/mesh/allow")] = None,
    caller: Annotated[str | None, typer.Option(help="Who asked")] = None,
    result: Annotated[str | None, typer.Option(help="JSON result, e.g. false")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 50,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
) -> None:
    """Logged decisions as JSON lines, newest first."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("path", path), ("caller", caller), ("result", result), ("since", since)):
        if value is not None:
            params[name] = value
    rows = _call(
        server, token, ca_bundle, data_dir, "GET", "/v1/admin/policy/decisions", params=params
    ).json()
    for row in rows:
        typer.echo(json.dumps(row, sort_keys=True))


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
