"""The server's L4 verdict compiler and each node's slice of the shared state."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError
from policy.testing import load_directory
from trustd.services.verdicts import MESH_PACKAGE, L4Compiler, SharedState, node_state

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


def test_each_node_takes_its_own_destinations_from_the_shared_state() -> None:
    shared = SharedState(
        (3, 7, 1),
        {
            "identities": {WEB: 256, API: 257, DB: 258},
            "ipcache": {"10.0.0.1/32": 256},
            "policy": {API: {"257/256/80/6": 1}, DB: {"258/257/0/6": 1, "258/257/22/6": 0}},
            "revoked": {"259": 1},
        },
    )
    api_node = node_state(shared, [API, API], 3)
    assert api_node == {
        "identities": {WEB: 256, API: 257, DB: 258},
        "ipcache": {"10.0.0.1/32": 256},
        "policy": {"257/256/80/6": 1},
        "revoked": {"259": 1},
        "l7_revision": 3,
    }
    assert node_state(shared, [API, DB], 3)["policy"] == {
        "257/256/80/6": 1,
        "258/257/0/6": 1,
        "258/257/22/6": 0,
    }
    assert node_state(shared, [WEB], 3)["policy"] == {}
    # The shared sections are left as they were.
    assert shared.sections["policy"][DB] == {"258/257/0/6": 1, "258/257/22/6": 0}
