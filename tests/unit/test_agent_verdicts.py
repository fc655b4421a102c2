"""The agent's verdict table: bad updates change nothing; and the HTTP ext_authz endpoint
answering from it over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from trustd.agent.enforcement.state import PolicyKey, VerdictTable
from trustd.agent.errors import InvalidVerdicts
from trustd.agent.extauthz import Authorizer, start_extauthz

WEB, API = "spiffe://example.org/ns/web/a", "spiffe://example.org/ns/api/b"
MESH = (Path(__file__).parents[2] / "rego" / "mesh.rego").read_text()
FULL: dict[str, Any] = {
    "revision": 3,
    "base": 0,
    "changes": {
        "identities": {"set": {WEB: 256, API: 257}},
        "ipcache": {"set": {"10.213.0.1/32": 256, "10.213.0.2/32": 257}},
        "policy": {"set": {"257/256/8443/6": 1}},
        "revoked": {"set": {}},
    },
    "l7": {
        "revision": 1,
        "modules": {"mesh.rego": MESH},
        "data": {
            "mesh": {
                "allow": [{"name": "r", "source": WEB, "destination": API, "methods": ["GET"]}],
                "deny": [],
            }
        },
    },
}


def test_full_then_delta() -> None:
    table = VerdictTable().applied(FULL)
    assert table.allows(257, 256, 8443, 6)
    assert not table.allows(257, 256, 22, 6)
    delta = {
        "revision": 4,
        "base": 3,
        "changes": {"revoked": {"set": {"256": 1}, "remove": []}},
    }
    after = table.applied(delta)
    assert not after.allows(257, 256, 8443, 6)
    assert table.policy == {PolicyKey(257, 256, 8443, 6): True}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"revision": 5, "base": 2, "changes": {}}, "revision gap"),
        ({"revision": 3, "base": 3, "changes": {}}, "does not follow"),
        ({"revision": 4, "base": 3, "changes": {"policy": {"set": {"9/256/1/6": 1}}}}, "unknown"),
        ({"revision": 4, "base": 3, "changes": {"ipcache": {"set": {"x": 256}}}}, "IPv4"),
        ({"revision": 4, "base": 3, "changes": {"policy": {"set": {"1/2": 1}}}}, "dst/src"),
        ({"revision": 4, "base": 3, "changes": {"nope": {}}}, "unknown sections"),
        ({"revision": 4}, "needs revision"),
    ],
)
def test_bad_updates_change_nothing(update: dict[str, Any], message: str) -> None:
    table = VerdictTable().applied(FULL)
    with pytest.raises(InvalidVerdicts, match=message):
        table.applied(update)
    assert table.revision == 3 and table.allows(257, 256, 8443, 6)


async def _check(port: int, headers: dict[str, str], method: str = "GET") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} /v1/x HTTP/1.1", "Host: a", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def test_http_ext_authz_answers_from_the_table() -> None:
    holder = {"table": VerdictTable().applied(FULL)}

    async def run() -> list[int]:
        server = await start_extauthz("127.0.0.1", 0, Authorizer(lambda: holder["table"]))
        port = server.sockets[0].getsockname()[1]
        xfcc = f"By={API};Hash=ab;URI={WEB}"
        try:
            results = [
                await _check(port, {"x-forwarded-client-cert": xfcc}),
                await _check(port, {"x-forwarded-client-cert": xfcc}, "DELETE"),
                await _check(port, {}),
                await _check(port, {"x-forwarded-client-cert": f"By={WEB};URI={API}"}),
            ]
            holder["table"] = holder["table"].applied(
                {"revision": 4, "base": 3, "changes": {"revoked": {"set": {"256": 1}}}}
            )
            results.append(await _check(port, {"x-forwarded-client-cert": xfcc}))
            return results
        finally:
            server.close()

    assert asyncio.run(run()) == [200, 403, 403, 403, 403]
