"""`trustd agent`: the node agent. It keeps its own --server and --data-dir (the agent's
state), not the shared admin connection."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli.output import fail

# A system service's places (FHS: /run for sockets, /var/lib for state), root's to write;
# `trustd token create` prints them when run as root.
DEFAULT_SOCKET = Path("/run/trustd/agent.sock")
DEFAULT_DATA_DIR = Path("/var/lib/trustd-agent")


def _enforcement_mode(value: str) -> Any:
    from trustd.agent.enforcement.ebpf import Mode

    try:
        return Mode(value)
    except ValueError:
        fail(f"--enforcement-mode must be enforce or audit, not {value!r}")


def agent(
    server: Annotated[
        list[str],
        typer.Option(
            envvar="TRUSTD_SERVER",
            metavar="URL",
            help="A trustd server URL; repeat it (or give a comma list) to fail over between "
            "replicas, the first tried first",
        ),
    ],
    socket: Annotated[Path, typer.Option(help="Workload API socket")] = DEFAULT_SOCKET,
    data_dir: Annotated[
        Path, typer.Option(help="Agent state (node key, SVID, bundle)")
    ] = DEFAULT_DATA_DIR,
    join_token: Annotated[
        str | None, typer.Option(envvar="TRUSTD_JOIN_TOKEN", help="First start only")
    ] = None,
    ca_sha256: Annotated[
        str | None, typer.Option(help="Pin the server's root CA on first contact")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
    enforce_interface: Annotated[
        list[str] | None,
        typer.Option(
            metavar="IFNAME",
            help="Attach the eBPF filter to tc ingress here (IFNAME or NETNS/IFNAME)",
        ),
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
    otel_endpoint: Annotated[
        str | None,
        typer.Option(
            envvar="TRUSTD_OTEL_ENDPOINT", help="OTLP/gRPC collector for traces (http://host:4317)"
        ),
    ] = None,
) -> None:
    """Run the node agent: attest, sync, serve the Workload API, enforce verdicts.

    eBPF enforces on each --enforce-interface, ext_authz answers on --ext-authz-listen.
    """
    from trustd.agent.config import CONFIG_ENV, AgentConfig

    servers = [u.strip().rstrip("/") for value in server for u in value.split(",") if u.strip()]
    if not servers:
        fail("--server needs a URL")
    config = AgentConfig(
        server=servers[0],
        other_servers=tuple(servers[1:]),
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
        otel_endpoint=otel_endpoint,
    )
    # The agent runs as long as the node: exec a fresh interpreter holding only the agent
    # (trustd/agent/__main__.py), not this command line's parser stack.
    os.environ[CONFIG_ENV] = json.dumps({"config": config.to_json(), "log_level": log_level})
    os.execv(sys.executable, [sys.executable, "-m", "trustd.agent"])  # noqa: S606
