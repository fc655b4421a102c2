"""The mesh rules as data, and the L4 compiler: which (source, destination, port, protocol)
tuples the mesh policy allows, for the eBPF datapath.

The L4 verdicts are computed from the mesh Rego policy itself, not re-implemented here: the
policy's rules are data (`data.mesh.allow` / `data.mesh.deny`), so the rules' source and
destination patterns say which (source, destination, port) tuples could possibly be allowed;
only those candidates are evaluated by the engine, never every pair. L7 fields (methods,
paths) are left to the proxy filters: an allow rule with L7 fields opens its port at L4 (as
Cilium does when it redirects to its proxy) and a deny rule with L7 fields denies at L7 only.
Evaluations are memoised for one policy revision, so a change to entries or addresses
evaluates only the new candidates.

A library: no web framework, no database. The service numbers the identities and stores
what this computes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError, UnknownPath

MESH_ALLOW = "trustd/mesh/allow"
MESH_PACKAGE = "package trustd.mesh"
# IANA protocol numbers (the IPv4 header's protocol field) of the L4 protocols.
PROTOCOLS = {"tcp": 6, "udp": 17}
# L7 protocols ride on TCP.
L4_OF = {"tcp": "tcp", "http": "tcp", "http2": "tcp", "grpc": "tcp", "udp": "udp"}
ANY_PORT = 0

# (destination, source, port, protocol name) -> allowed.
L4Verdicts = dict[tuple[str, str, int, str], bool]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The mesh policy's globs ("*" one segment, "**" any) as a regex that matches at least
    what the policy's own `glob_matches` does; it only picks candidates, Rego decides."""
    parts = re.split(r"(\*\*|\*)", pattern)
    body = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )
    return re.compile(body + r"\Z")


@dataclass(frozen=True)
class MeshRule:
    """One rule of `data.mesh.allow` or `data.mesh.deny` (rego/mesh.rego `matches`): every
    field it sets must match, an absent one matches anything (empty tuple, "**")."""

    name: str
    source: str = "**"
    destination: str = "**"
    ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    # The rule as the policy reads it, for the engine: other fields ride along untouched.
    fields: Mapping[str, Any] | None = None

    @classmethod
    def from_data(cls, rule: Any) -> MeshRule | None:
        """The rule read from policy data; None for an entry that is not an object (the
        policy's `some rule in data.mesh.allow` skips nothing, but `matches` fails on it)."""
        if not isinstance(rule, Mapping):
            return None
        return cls(
            name=str(rule.get("name", "")),
            source=str(rule.get("source", "**")),
            destination=str(rule.get("destination", "**")),
            ports=tuple(int(p) for p in rule.get("ports") or ()),
            protocols=tuple(str(p) for p in rule.get("protocols") or ()),
            methods=tuple(str(m) for m in rule.get("methods") or ()),
            paths=tuple(str(p) for p in rule.get("paths") or ()),
            fields=dict(rule),
        )

    @property
    def has_l7(self) -> bool:
        return bool(self.methods or self.paths)

    def at_l4(self) -> MeshRule | None:
        """The rule as the datapath sees it: L7 fields dropped, L7 protocols mapped to the
        L4 protocol they ride on; None when nothing of it is L4 (only unknown protocols)."""
        l4 = tuple(sorted({L4_OF[p] for p in self.protocols if p in L4_OF}))
        if self.protocols and not l4:
            return None
        kept = {k: v for k, v in (self.fields or {}).items() if k not in ("methods", "paths")}
        if self.protocols:
            kept["protocols"] = list(l4)
        return MeshRule(self.name, self.source, self.destination, self.ports, l4, fields=kept)

    def as_data(self) -> dict[str, Any]:
        return dict(self.fields or {"name": self.name})


def mesh_rules(data: Mapping[str, Any]) -> tuple[list[MeshRule], list[MeshRule]]:
    """The allow and deny rules of a policy data document (absent: none)."""
    mesh = data.get("mesh")
    if not isinstance(mesh, Mapping):
        return [], []
    out: tuple[list[MeshRule], list[MeshRule]] = ([], [])
    for kept, key in zip(out, ("allow", "deny"), strict=True):
        rules = mesh.get(key) or []
        for raw in rules if isinstance(rules, list) else []:
            rule = MeshRule.from_data(raw)
            if rule is not None:
                kept.append(rule)
    return out


def l4_rules(rules: Iterable[MeshRule], allow: bool) -> list[MeshRule]:
    """The rules that decide at L4. A deny rule with L7 fields denies some requests of a
    connection only: it is left to the proxy filters, never dropped at L4."""
    out = []
    for rule in rules:
        if rule.has_l7 and not allow:
            continue
        l4 = rule.at_l4()
        if l4 is not None:
            out.append(l4)
    return out


class L4Compiler:
    """Evaluates the mesh policy on candidate tuples, memoised for one policy revision."""

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        allow, deny = mesh_rules(data)
        self.allow_rules = l4_rules(allow, allow=True)
        self.deny_rules = l4_rules(deny, allow=False)
        l4_data = dict(data)
        l4_data["mesh"] = {
            "allow": [r.as_data() for r in self.allow_rules],
            "deny": [r.as_data() for r in self.deny_rules],
        }
        self._engine = EmbeddedEngine(modules, l4_data)
        self._memo: dict[tuple[str, str, int, str], bool] = {}
        self.evaluations = 0

    def _allowed(self, src: str, dst: str, port: int, proto: str) -> bool:
        key = (src, dst, port, proto)
        found = self._memo.get(key)
        if found is None:
            self.evaluations += 1
            candidate = {"source": src, "destination": dst, "port": port, "protocol": proto}
            try:
                # The compiled program answers without cloning the engine per candidate,
                # which a change to a policy with many rules pays for every candidate.
                result = self._engine.query(MESH_ALLOW, json.dumps(candidate))
            except UnknownPath as exc:
                raise PolicyEvaluationError(exc.detail, rule=MESH_ALLOW) from None
            found = self._memo[key] = result.value is True
        return found

    def verdicts(self, identities: Iterable[str]) -> L4Verdicts:
        """(destination, source, port, protocol) -> allowed, for the candidates the rules
        name; a wildcard port appears as port 0, and ports a deny rule names next to a
        wildcard allow get their own (deny) verdict, which the datapath checks first.

        Raises:
            PolicyEvaluationError: the engine failed on a candidate.
        """
        ids = sorted(identities)
        deny_ports = {
            (port, L4_OF.get(p, p))
            for rule in self.deny_rules
            for port in rule.ports
            for p in rule.protocols or list(PROTOCOLS)
        }
        out: L4Verdicts = {}
        for rule in self.allow_rules:
            sources = glob_regex(rule.source)
            dests = glob_regex(rule.destination)
            ports = list(rule.ports) or [ANY_PORT]
            protos = list(rule.protocols) or list(PROTOCOLS)
            for src in (i for i in ids if sources.match(i)):
                for dst in (i for i in ids if dests.match(i)):
                    for proto in protos:
                        for port in ports:
                            out[(dst, src, port, proto)] = self._allowed(src, dst, port, proto)
                        if ports == [ANY_PORT]:
                            for port, deny_proto in deny_ports:
                                if deny_proto == proto:
                                    allowed = self._allowed(src, dst, port, proto)
                                    out[(dst, src, port, proto)] = allowed
        return out
