"""The agent's configuration: built by `trustd agent` from its options, handed as JSON to
the agent process it execs (trustd/agent/__main__.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

from pki.keys import KeyType
from trustd.agent.enforcement.ebpf import DEFAULT_PIN_DIR, Mode

# Where `trustd agent` hands its checked options to the agent process.
CONFIG_ENV = "TRUSTD_AGENT_CONFIG"


@dataclass(frozen=True)
class AgentConfig:
    # The server address tried first; `other_servers` are where the agent fails over to
    # (`trustd.agent.client.ServerClient`).
    server: str
    data_dir: Path
    socket_path: Path
    join_token: str | None = None
    # How a node without an identity attests: join_token, or tpm with the TPM at
    # tpm_device (a device path or a TCTI string) quoting tpm_pcrs (SHA-256 bank).
    attestor: str = "join_token"
    tpm_device: str | None = None
    tpm_pcrs: tuple[int, ...] = tuple(range(8))
    # Where the node SVID's key lives: file (node-key.pem) or tpm (made in and never
    # leaving the TPM at tpm_device; node-key.tpm only loads in that TPM).
    node_key: str = "file"
    ca_sha256: str | None = None
    key_type: KeyType = KeyType.EC_P256
    # Enforcement: tc ingress on these interfaces (IFNAME or NETNS/IFNAME), the mode, where
    # the maps are pinned, and how long without trustd before everything is denied.
    enforce_interfaces: tuple[str, ...] = ()
    enforcement_mode: Mode = Mode.ENFORCE
    bpf_pin_dir: Path = DEFAULT_PIN_DIR
    staleness_limit: float | None = None
    # HOST:PORT for the HTTP ext_authz endpoint (nginx auth_request, Envoy HTTP).
    ext_authz_listen: str | None = None
    # HOST:PORT for Envoy's gRPC ext_authz (envoy.service.auth.v3.Authorization/Check).
    ext_authz_grpc_listen: str | None = None
    # Flows: connection verdicts (the tc program's ring buffer, ext_authz decisions)
    # aggregated per interval (seconds) and sent to trustd; off: none reported.
    flow_events: bool = True
    flow_interval: float = 1.0
    # OpenTelemetry: the OTLP/gRPC collector the agent's spans go to (none: off).
    otel_endpoint: str | None = None
    other_servers: tuple[str, ...] = ()

    @property
    def servers(self) -> tuple[str, ...]:
        """Every server address, the first one first."""
        return (self.server, *self.other_servers)

    @property
    def serves_proxies(self) -> bool:
        """Whether this agent answers proxies (either ext_authz endpoint)."""
        return bool(self.ext_authz_listen or self.ext_authz_grpc_listen)

    def to_json(self) -> str:
        """The config as JSON, for the agent process `trustd agent` execs."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Enum):
                return value.value
            return list(value) if isinstance(value, tuple) else value

        return json.dumps({f.name: plain(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, value in json.loads(text).items():
            kind = hints[name]
            if get_origin(kind) is UnionType:
                kind = next(arg for arg in get_args(kind) if arg is not type(None))
            if value is not None and kind in (Path, KeyType, Mode):
                value = kind(value)
            elif get_origin(kind) is tuple:
                value = tuple(value)
            values[name] = value
        return cls(**values)
