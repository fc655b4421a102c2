"""The config `trustd agent` hands to the agent process survives the trip whole."""

from __future__ import annotations

from pathlib import Path

from pki.keys import KeyType
from trustd.agent.config import AgentConfig
from trustd.agent.enforcement.ebpf import Mode


def test_round_trip_keeps_every_field_and_type() -> None:
    config = AgentConfig(
        server="https://trustd.example:8443",
        data_dir=Path("/var/lib/trustd-agent"),
        socket_path=Path("/run/trustd/agent.sock"),
        join_token="abc.def",
        ca_sha256="00" * 32,
        key_type=KeyType.EC_P384,
        enforce_interfaces=("eth0", "ns1/eth0"),
        enforcement_mode=Mode.AUDIT,
        bpf_pin_dir=Path("/sys/fs/bpf/other"),
        staleness_limit=60.0,
        ext_authz_listen="127.0.0.1:9191",
        flow_events=False,
        flow_interval=2.5,
        other_servers=("https://trustd-2.example:8443", "https://trustd-3.example:8443"),
    )
    assert AgentConfig.from_json(config.to_json()) == config
    assert config.servers[0] == "https://trustd.example:8443"
    assert len(config.servers) == 3
    defaults = AgentConfig("https://t", Path("d"), Path("s"))
    assert AgentConfig.from_json(defaults.to_json()) == defaults
