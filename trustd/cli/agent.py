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


def _attestor(value: str, tpm_device: str | None) -> str:
    if value not in ("join_token", "tpm"):
        fail(f"--attestor must be join_token or tpm, not {value!r}")
    if value == "tpm" and not tpm_device:
        fail("--attestor tpm needs --tpm-device (a device path or a TCTI string)")
    return value


def _node_key(value: str, tpm_device: str | None) -> str:
    if value not in ("file", "tpm"):
        fail(f"--node-key must be file or tpm, not {value!r}")
    if value == "tpm" and not tpm_device:
        fail("--node-key tpm needs --tpm-device (a device path or a TCTI string)")
    return value


def _pcrs(value: str) -> tuple[int, ...]:
    try:
        pcrs = tuple(sorted({int(p) for p in value.split(",") if p.strip()}))
    except ValueError:
        fail(f"--tpm-pcrs must be comma-separated PCR numbers, not {value!r}")
    if any(not 0 <= p <= 23 for p in pcrs):
        fail("--tpm-pcrs are 0 to 23")
    return pcrs


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
    attestor: Annotated[
        str, typer.Option(help="How a node without an identity attests: join_token or tpm")
    ] = "join_token",
    tpm_device: Annotated[
        str | None,
        typer.Option(
            envvar="TRUSTD_TPM_DEVICE",
            metavar="DEV",
            help="The TPM: a device (/dev/tpmrm0) or a TCTI (swtpm:host=127.0.0.1,port=2321)",
        ),
    ] = None,
    node_key: Annotated[
        str,
        typer.Option(help="Where the node SVID's key lives: file, or tpm (needs --tpm-device)"),
    ] = "file",
    tpm_pcrs: Annotated[
        str,
        typer.Option(help="SHA-256 PCRs the tpm attestor quotes (comma-separated; '' for none)"),
    ] = "0,1,2,3,4,5,6,7",
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
    flow_events: Annotated[
        bool,
        typer.Option(
            "--flow-events/--no-flow-events",
            help="Report connection verdicts (eBPF, ext_authz) to trustd as flows",
        ),
    ] = True,
    flow_interval: Annotated[
        float, typer.Option(min=0.1, max=60.0, help="Seconds of flows aggregated per report")
    ] = 1.0,
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
        attestor=_attestor(attestor, tpm_device),
        tpm_device=tpm_device,
        tpm_pcrs=_pcrs(tpm_pcrs),
        node_key=_node_key(node_key, tpm_device),
        enforce_interfaces=tuple(enforce_interface or ()),
        enforcement_mode=_enforcement_mode(enforcement_mode),
        bpf_pin_dir=bpf_pin_dir,
        staleness_limit=staleness_limit,
        ext_authz_listen=ext_authz_listen,
        ext_authz_grpc_listen=ext_authz_grpc_listen,
        flow_events=flow_events,
        flow_interval=flow_interval,
        otel_endpoint=otel_endpoint,
    )
    # The agent runs as long as the node: exec a fresh interpreter holding only the agent
    # (trustd/agent/__main__.py), not this command line's parser stack.
    os.environ[CONFIG_ENV] = json.dumps({"config": config.to_json(), "log_level": log_level})
    os.execv(sys.executable, [sys.executable, "-m", "trustd.agent"])  # noqa: S606
