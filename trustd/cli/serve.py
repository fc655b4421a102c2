"""`trustd serve` and `trustd init`: run the service, or prepare its database and CA."""

from __future__ import annotations

import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pki.errors import TrustdError
from trustd.cli.context import connection
from trustd.cli.output import fail, invoked_as, progress

if TYPE_CHECKING:
    from trustd.settings import Settings

# The CLI's own default --data-dir (trustd.cli.app): commands printed for another one name it.
_CLI_DATA_DIR = Path("var")


class OnOff(StrEnum):
    ON = "on"
    OFF = "off"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class AccessLog(StrEnum):
    ALL = "all"
    DEFAULT = "default"
    OFF = "off"


def _data_dir() -> Path | None:
    """The shared --data-dir when given; otherwise the settings decide (file, env, default)."""
    shared = connection()
    return shared.data_dir if shared.data_dir_given else None


def serve(
    config: Annotated[
        Path | None, typer.Option(envvar="TRUSTD_CONFIG", help="TOML settings file")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT [127.0.0.1:8443]")] = None,
    tls: Annotated[
        OnOff | None, typer.Option(help="'off' behind a TLS-terminating proxy [on]")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes [1]")] = None,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations first")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    log_format: Annotated[
        LogFormat | None,
        typer.Option(help="console lines, JSON lines, or auto: console on a terminal [auto]"),
    ] = None,
    access_log: Annotated[
        AccessLog | None,
        typer.Option(
            help="default: every request but successful agent long-polls, health checks "
            "and metrics scrapes; all; off [default]"
        ),
    ] = None,
) -> None:
    """Run the trustd service (HTTPS API + admin socket), its state in --data-dir."""
    from trustd import bootstrap, server
    from trustd.logs import configure_logging, hold_info
    from trustd.services.container import build_services
    from trustd.settings import load_settings

    if config is not None:
        os.environ["TRUSTD_CONFIG"] = str(config)
    try:
        settings = load_settings(
            listen=listen,
            data_dir=_data_dir(),
            tls=None if tls is None else tls is OnOff.ON,
            workers=workers,
            log_format=None if log_format is None else log_format.value,
            access_log=None if access_log is None else access_log.value,
        )
        configure_logging(log_level, settings.log_format)
        # The banner comes first: until it is out only warnings and errors are logged (the
        # progress lines below say what startup does), unless debugging.
        hold_info(log_level.lower() != "debug")
        # Read before anything below creates files: they tell a lost database from a new one.
        earlier = bootstrap.earlier_deployment(settings)
        bootstrap.prepare_data_dir(settings.data_dir)
        bootstrap.check_database(settings.resolved_database_url)
        if migrate:
            progress(f"migrating database {_redact(settings.resolved_database_url)}")
            bootstrap.migrate(settings.resolved_database_url)
        services = build_services(settings)
        report = bootstrap.initialise(services, earlier)
        if report.created_ca:
            progress(f"created the CA for trust domain {settings.trust_domain}")
        services.ca.load()
        bundle_path = bootstrap.write_bundle_file(services)
        services.engine.dispose()
        listeners = server.bind_sockets(settings)
    except TrustdError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")

    def ready() -> None:
        _banner(settings, bundle_path, report)

    server.run(settings, listeners, log_level, ready)


def _redact(url: str) -> str:
    from trustd.bootstrap import redact_url

    return redact_url(url)


def _banner(settings: Settings, bundle: Path, report: Any) -> None:
    """What is running, where, and what to try next (README's "Run it" steps, in the same
    order), printed before the first log line."""
    td = settings.trust_domain
    url = f"{'https' if settings.tls else 'http'}://{settings.listen}"
    me = invoked_as()
    if settings.data_dir != _CLI_DATA_DIR:
        me += f" --data-dir {shlex.quote(str(settings.data_dir))}"
    lines = [
        "",
        "trustd is running",
        f"  URL:           {url}",
        f"  admin UI:      {url}/ui/",
        f"  trust domain:  {td}",
        f"  trust bundle:  {bundle.resolve()}",
    ]
    if report.bootstrap_token:
        lines += [
            "  bootstrap admin token (shown once, valid 24 h):",
            f"    {report.bootstrap_token}",
        ]
    curl_ca = f"--cacert {shlex.quote(str(bundle))} " if settings.tls else ""
    lines += [
        "",
        "Next, in another terminal (the CLI reaches this server through its admin socket):",
        f"  {me} svid x509 --spiffe-id spiffe://{td}/demo --out ./demo",
        f"  {me} svid jwt --spiffe-id spiffe://{td}/demo --audience api",
        f"  {me} ca show",
        f"  {me} bundle show --format jwks",
        f"  {me} admin token create --name ci",
        f"  curl {curl_ca}{url}/v1/bundle",
        f"  {me} token create      # a join token for an agent: README's walk-through",
        "",
        f"Logs follow ({_log_note(settings)}). Ctrl-C stops the server.",
        "",
    ]
    typer.echo("\n".join(lines))
    sys.stdout.flush()


def _log_note(settings: Settings) -> str:
    if settings.access_log == "default":
        return (
            "requests are logged, but not successful agent long-polls, health checks or "
            "metrics scrapes: --access-log all for those"
        )
    return "every request is logged" if settings.access_log == "all" else "no access log"


def init(
    force_new_ca: Annotated[
        bool,
        typer.Option(
            "--force-new-ca",
            help="Create a new CA although --data-dir shows an earlier one whose database "
            "is gone (agents pinned to the old root must be re-joined)",
        ),
    ] = False,
) -> None:
    """Migrate the database and create the CA in --data-dir without starting the server."""
    from trustd import bootstrap
    from trustd.services.container import build_services
    from trustd.settings import load_settings

    try:
        settings = load_settings(data_dir=_data_dir())
        earlier = [] if force_new_ca else bootstrap.earlier_deployment(settings)
        bootstrap.prepare_data_dir(settings.data_dir)
        bootstrap.check_database(settings.resolved_database_url)
        bootstrap.migrate(settings.resolved_database_url)
        services = build_services(settings)
        report = bootstrap.initialise(services, earlier)
        services.ca.load()
        bundle = bootstrap.write_bundle_file(services)
    except TrustdError as exc:
        fail(str(exc))
    typer.echo(f"trust domain {settings.trust_domain}; bundle at {bundle}")
    if report.bootstrap_token:
        typer.echo(f"bootstrap admin token (shown once, valid 24 h): {report.bootstrap_token}")
