"""`trustd serve` and `trustd init`: run the service, or prepare its database and CA."""

from __future__ import annotations

import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pki.errors import TrustdError
from trustd.cli.context import connection
from trustd.cli.output import fail, progress


class OnOff(StrEnum):
    ON = "on"
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
) -> None:
    """Run the trustd service (HTTPS API + admin socket), its state in --data-dir."""
    from trustd import bootstrap, server
    from trustd.logs import configure_logging
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
        )
        configure_logging(log_level)
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
        _banner(settings.tls, settings.listen, settings.trust_domain, bundle_path, report)

    server.run(settings, listeners, log_level, ready)


def _redact(url: str) -> str:
    from trustd.bootstrap import redact_url

    return redact_url(url)


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
