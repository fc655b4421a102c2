"""The L4 verdict compiler (a library: `policy.verdicts`), the mesh rules it reads, and
each node's slice of the shared state."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError
from policy.testing import load_directory
from policy.verdicts import (
    MESH_PACKAGE,
    L4Compiler,
    MeshRule,
    l4_rules,
    mesh_rules,
    named_trust_domains,
)
from trustd.domain.verdicts import PolicyKey, PolicyVerdict, VerdictState
from trustd.services.verdicts import AMBIGUOUS_IDENTITY, node_policy, resolve_ipcache

TD = "spiffe://example.org"
WEB, API, DB = f"{TD}/ns/web/frontend", f"{TD}/ns/api/orders", f"{TD}/ns/db/postgres"
BAD = f"{TD}/ns/quarantine/x"
SHIPPED = load_directory(Path(__file__).parents[2] / "rego", tests=False)
MESH = {n: s for n, s in SHIPPED.modules.items() if MESH_PACKAGE in s}


def test_compiled_verdicts_are_the_policys_own_answers() -> None:
    data = {
        "mesh": {
            "allow": [
                {"name": "web-api", "source": f"{TD}/ns/web/**", "destination": API, "ports": [80]},
                {"name": "any-db", "destination": DB, "protocols": ["tcp"]},
            ],
            "deny": [
                {"name": "quarantine", "source": f"{TD}/ns/quarantine/**"},
                {"name": "no-ssh", "ports": [22], "protocols": ["tcp"]},
            ],
        }
    }
    verdicts = L4Compiler(MESH, data).verdicts([WEB, API, DB, BAD])
    # Every candidate, answered by the interpreter on the full policy, says the same.
    reference = EmbeddedEngine(SHIPPED.modules, data)
    for (dst, src, port, proto), allowed in verdicts.items():
        candidate = {"source": src, "destination": dst, "port": port, "protocol": proto}
        assert reference.evaluate("data.trustd.mesh.allow", candidate) is allowed
    assert verdicts[(API, WEB, 80, "tcp")] is True
    assert verdicts[(DB, WEB, 0, "tcp")] is True
    assert verdicts[(DB, WEB, 22, "tcp")] is False
    assert verdicts[(DB, BAD, 0, "tcp")] is False


def test_rules_without_the_mesh_module_are_an_evaluation_error() -> None:
    compiler = L4Compiler({}, {"mesh": {"allow": [{"name": "a", "destination": API}]}})
    with pytest.raises(PolicyEvaluationError):
        compiler.verdicts([WEB, API])


def test_mesh_rules_at_l4() -> None:
    allow, deny = mesh_rules(
        {
            "mesh": {
                "allow": [
                    {"name": "h", "destination": API, "protocols": ["http"], "methods": ["GET"]},
                    {"name": "q", "protocols": ["quic"]},
                    "not a rule",
                ],
                "deny": [{"name": "p", "paths": ["/admin/**"]}, {"name": "s", "ports": [22]}],
            }
        }
    )
    assert [r.name for r in allow] == ["h", "q"] and [r.name for r in deny] == ["p", "s"]
    # An HTTP allow opens its port at L4 over TCP; an unknown protocol is nothing at L4.
    (opened,) = l4_rules(allow, allow=True)
    assert opened.protocols == ("tcp",) and not opened.has_l7
    assert opened.as_data() == {"name": "h", "destination": API, "protocols": ["tcp"]}
    # A deny with L7 fields is left to the proxy; the L4 one stays.
    assert [r.name for r in l4_rules(deny, allow=False)] == ["s"]
    assert MeshRule.from_data({"name": "x"}) == MeshRule("x", fields={"name": "x"})
    assert mesh_rules({"mesh": "nonsense"}) == ([], [])


def test_each_node_takes_its_own_destinations_from_the_shared_state() -> None:
    state = VerdictState(
        identities={WEB: 256, API: 257, DB: 258},
        ipcache={"10.0.0.1/32": 256},
        policy={
            API: [PolicyVerdict(257, 256, 80, 6, True)],
            DB: [PolicyVerdict(258, 257, 0, 6, True), PolicyVerdict(258, 257, 22, 6, False)],
        },
        revoked=[259],
    )
    assert node_policy(state, [API, API]) == {PolicyKey(257, 256, 80, 6): True}
    assert node_policy(state, [API, DB]) == {
        PolicyKey(257, 256, 80, 6): True,
        PolicyKey(258, 257, 0, 6): True,
        PolicyKey(258, 257, 22, 6): False,
    }
    assert node_policy(state, [WEB]) == {}
    # The shared state is left as it was.
    assert len(state.policy[DB]) == 2


def test_the_ip_cache_resolves_each_family_against_its_own_prefixes() -> None:
    a, b = "spiffe://example.org/a", "spiffe://example.org/b"
    numbers = {a: 256, b: 257}
    entries = [("e1", a, ["fd00:1::/64", "10.1.0.0/16"]), ("e2", b, [])]
    reported = [
        (b, "fd00:1::5"),  # inside a's IPv6 prefix: held back
        (a, "fd00:1::6"),  # inside it, and a's own: the prefix covers it already
        (b, "fd00:2::5"),  # b's, as a /128
        (a, "fd00:3::1"),  # claimed by both: ambiguous
        (b, "fd00:3::1"),
        (b, "10.2.0.1"),  # IPv4 is untouched by the IPv6 prefixes and the other way round
    ]
    ipcache, held_back, ambiguous = resolve_ipcache(entries, numbers, reported)
    assert ipcache == {
        "fd00:1::/64": 256,
        "10.1.0.0/16": 256,
        "fd00:2::5/128": 257,
        "fd00:3::1/128": AMBIGUOUS_IDENTITY,
        "10.2.0.1/32": 257,
    }
    assert held_back == ["fd00:1::5"] and ambiguous == ["fd00:3::1"]


def test_the_trust_domains_mesh_rules_name() -> None:
    data = {
        "mesh": {
            "allow": [
                {"name": "b-in", "source": "spiffe://B.example/client", "destination": "**"},
                {"name": "any", "source": "spiffe://*/x", "destination": "spiffe://a.example/**"},
            ],
            "deny": [{"name": "b-out", "source": "spiffe://b.example/**"}, {"source": "**"}],
        }
    }
    assert named_trust_domains(data) == {"b.example": ["b-in", "b-out"], "a.example": ["any"]}
    assert named_trust_domains({}) == {}
