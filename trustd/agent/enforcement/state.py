"""The verdicts an agent holds: applied from the sync channel's full states and deltas,
validated before anything changes, so a bad update leaves the last good state in place."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trustd.agent.errors import InvalidVerdicts

SECTIONS = ("identities", "ipcache", "policy", "revoked")
PROTOCOL_NUMBERS = frozenset({1, 6, 17})


@dataclass(frozen=True)
class PolicyKey:
    dst: int
    src: int
    port: int
    proto: int


@dataclass
class VerdictTable:
    revision: int = 0
    identities: dict[str, int] = field(default_factory=dict)
    ipcache: dict[str, int] = field(default_factory=dict)
    policy: dict[PolicyKey, bool] = field(default_factory=dict)
    revoked: frozenset[int] = frozenset()
    # The mesh policy for L7 decisions: revision, modules, data.
    l7: dict[str, Any] | None = None

    def allows(self, dst: int, src: int, port: int, proto: int) -> bool:
        """The L4 verdict as the datapath computes it: exact port first, then any port."""
        if src in self.revoked:
            return False
        found = self.policy.get(PolicyKey(dst, src, port, proto))
        if found is None:
            found = self.policy.get(PolicyKey(dst, src, 0, proto), False)
        return found

    def applied(self, update: Mapping[str, Any]) -> VerdictTable:
        """A new table with `update` (a full state when `base` is 0, else a delta from
        this table's revision) applied; this table is left as it was.

        Raises:
            InvalidVerdicts: malformed update, a revision gap, or an unknown identity.
        """
        try:
            revision, base = int(update["revision"]), int(update["base"])
            changes = update["changes"]
        except (KeyError, TypeError, ValueError):
            raise InvalidVerdicts("a verdict update needs revision, base and changes") from None
        if base != 0 and base != self.revision:
            raise InvalidVerdicts(f"revision gap: holding {self.revision}, delta is from {base}")
        if revision <= base:
            raise InvalidVerdicts(f"revision {revision} does not follow {base}")
        raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        if base != 0:
            raw = {
                "identities": dict(self.identities),
                "ipcache": dict(self.ipcache),
                "policy": {
                    f"{k.dst}/{k.src}/{k.port}/{k.proto}": int(v) for k, v in self.policy.items()
                },
                "revoked": {str(i): 1 for i in self.revoked},
            }
        if not isinstance(changes, Mapping) or set(changes) - set(SECTIONS):
            raise InvalidVerdicts(f"unknown sections in {sorted(changes)}")
        for section, change in changes.items():
            if not isinstance(change, Mapping):
                raise InvalidVerdicts(f"section {section} is not an object")
            for key in change.get("remove", []):
                raw[section].pop(str(key), None)
            raw[section].update(change.get("set", {}))
        l7 = update.get("l7") or self.l7
        return _validated(revision, raw, l7)


def _number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        raise InvalidVerdicts(f"{what}: {value!r} is not an identity number")
    return value


def _validated(revision: int, raw: Mapping[str, Mapping[str, Any]], l7: Any) -> VerdictTable:
    identities = {str(k): _number(v, f"identity {k}") for k, v in raw["identities"].items()}
    known = set(identities.values())
    ipcache: dict[str, int] = {}
    for prefix, number in raw["ipcache"].items():
        try:
            network = ipaddress.IPv4Network(prefix)
        except ValueError:
            raise InvalidVerdicts(f"ipcache: {prefix!r} is not an IPv4 prefix") from None
        if _number(number, f"ipcache {prefix}") not in known:
            raise InvalidVerdicts(f"ipcache {prefix}: unknown identity {number}")
        ipcache[str(network)] = number
    policy: dict[PolicyKey, bool] = {}
    for key, verdict in raw["policy"].items():
        try:
            dst, src, port, proto = (int(p) for p in str(key).split("/"))
        except ValueError:
            raise InvalidVerdicts(f"policy: {key!r} is not dst/src/port/proto") from None
        for number in (dst, src):
            if number not in known:
                raise InvalidVerdicts(f"policy {key}: unknown identity {number}")
        if not 0 <= port < 65536 or proto not in PROTOCOL_NUMBERS or verdict not in (0, 1):
            raise InvalidVerdicts(f"policy {key}: bad port, protocol or verdict")
        policy[PolicyKey(dst, src, port, proto)] = bool(verdict)
    revoked = frozenset(_number(int(k), "revoked") for k in raw["revoked"])
    if l7 is not None and not (
        isinstance(l7, Mapping)
        and isinstance(l7.get("modules"), Mapping)
        and isinstance(l7.get("data"), Mapping)
    ):
        raise InvalidVerdicts("l7: needs modules and data")
    return VerdictTable(revision, identities, ipcache, policy, revoked, dict(l7) if l7 else None)
