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
from collections.abc import Iterable, Mapping, Sequence
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


def l4_allows(verdicts: L4Verdicts, dst: str, src: str, port: int, proto: str) -> bool:
    """The verdict as the datapath looks it up (enforce.c, and the agent's `VerdictTable`
    on numeric keys): the exact port first, then any port; no entry is the default deny."""
    found = verdicts.get((dst, src, port, proto))
    if found is None:
        found = verdicts.get((dst, src, ANY_PORT, proto), False)
    return found


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


# Evaluates the mesh policy's own decision for many candidates in one query, each with the
# rule lists narrowed to those whose SPIFFE ID globs could match it: the policy decides
# (`with` replaces the data it reads), but a candidate is no longer checked against every
# rule of the policy, which made compiling quadratic in the number of rules.
BATCH_MODULE = """package trustd.l4_verdicts

import rego.v1

results := [allowed |
	some query in input.queries
	allowed := data.trustd.mesh.allow with input as query.input
		with data.mesh.allow as query.allow
		with data.mesh.deny as query.deny
]
"""
BATCH_RESULTS = "trustd/l4_verdicts/results"
BATCH_SIZE = 1000


class _Narrowing:
    """The rules whose SPIFFE ID globs could match a (source, destination): rules with an
    exact destination are found by it, the others are scanned."""

    def __init__(self, rules: Iterable[MeshRule]) -> None:
        self._exact: dict[str, list[tuple[re.Pattern[str], dict[str, Any]]]] = {}
        self._patterns: list[tuple[re.Pattern[str], re.Pattern[str], dict[str, Any]]] = []
        for rule in rules:
            sources = glob_regex(rule.source)
            if "*" in rule.destination:
                self._patterns.append((sources, glob_regex(rule.destination), rule.as_data()))
            else:
                self._exact.setdefault(rule.destination, []).append((sources, rule.as_data()))

    def rules(self, src: str, dst: str) -> list[dict[str, Any]]:
        found = [data for sources, data in self._exact.get(dst, ()) if sources.match(src)]
        found.extend(
            data
            for sources, dests, data in self._patterns
            if dests.match(dst) and sources.match(src)
        )
        return found


def _matching(pattern: str, ids: Sequence[str], known: frozenset[str]) -> list[str]:
    """The identities a glob may match: an exact one is looked up, not scanned for."""
    if "*" not in pattern:
        return [pattern] if pattern in known else []
    regex = glob_regex(pattern)
    return [i for i in ids if regex.match(i)]


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
        self._has_mesh = any(MESH_PACKAGE in source for source in modules.values())
        self._engine = EmbeddedEngine({**modules, "trustd_l4_verdicts.rego": BATCH_MODULE}, l4_data)
        self._allow = _Narrowing(self.allow_rules)
        self._deny = _Narrowing(self.deny_rules)
        self._memo: dict[tuple[str, str, int, str], bool] = {}
        self.evaluations = 0

    def _evaluate(self, candidates: list[tuple[str, str, int, str]]) -> None:
        """Answer `candidates` (source, destination, port, protocol) into the memo.

        Raises:
            PolicyEvaluationError: the engine failed, or the mesh policy gave no answer.
        """
        for start in range(0, len(candidates), BATCH_SIZE):
            batch = candidates[start : start + BATCH_SIZE]
            queries = [
                {
                    "input": {"source": src, "destination": dst, "port": port, "protocol": proto},
                    "allow": self._allow.rules(src, dst),
                    "deny": self._deny.rules(src, dst),
                }
                for src, dst, port, proto in batch
            ]
            try:
                result = self._engine.query(BATCH_RESULTS, json.dumps({"queries": queries}))
            except UnknownPath as exc:
                raise PolicyEvaluationError(exc.detail, rule=MESH_ALLOW) from None
            values = result.value if result.defined else None
            if not self._has_mesh or not isinstance(values, list) or len(values) != len(batch):
                raise PolicyEvaluationError(
                    f"the mesh policy ({MESH_ALLOW}) gave no decision", rule=MESH_ALLOW
                )
            self.evaluations += len(batch)
            for key, value in zip(batch, values, strict=True):
                self._memo[key] = value is True

    def verdicts(self, identities: Iterable[str]) -> L4Verdicts:
        """(destination, source, port, protocol) -> allowed, for the candidates the rules
        name; a wildcard port appears as port 0, and ports a deny rule names next to a
        wildcard allow get their own (deny) verdict, which the datapath checks first.

        Raises:
            PolicyEvaluationError: the engine failed on a candidate.
        """
        ids = sorted(identities)
        known = frozenset(ids)
        deny_ports = {
            (port, L4_OF.get(p, p))
            for rule in self.deny_rules
            for port in rule.ports
            for p in rule.protocols or list(PROTOCOLS)
        }
        wanted: dict[tuple[str, str, int, str], None] = {}
        for rule in self.allow_rules:
            ports = list(rule.ports) or [ANY_PORT]
            protos = list(rule.protocols) or list(PROTOCOLS)
            for src in _matching(rule.source, ids, known):
                for dst in _matching(rule.destination, ids, known):
                    for proto in protos:
                        for port in ports:
                            wanted[(dst, src, port, proto)] = None
                        if ports == [ANY_PORT]:
                            for port, deny_proto in deny_ports:
                                if deny_proto == proto:
                                    wanted[(dst, src, port, proto)] = None
        missing = [(s, d, port, proto) for d, s, port, proto in wanted]
        self._evaluate([key for key in missing if key not in self._memo])
        return {
            (d, s, port, proto): self._memo[(s, d, port, proto)] for d, s, port, proto in wanted
        }


def named_trust_domains(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """The trust domains the mesh rules name in a SPIFFE ID pattern, with the names of the
    rules naming each. Only a literal trust domain counts (`spiffe://b.example/**`); a
    pattern whose trust domain is a glob (`**`, `spiffe://*/x`) names none, and matches only
    the IDs a relying party could verify anyway (its own domain's and federated ones)."""
    named: dict[str, list[str]] = {}
    allow, deny = mesh_rules(data)
    for rule in [*allow, *deny]:
        for pattern in (rule.source, rule.destination):
            if not pattern.startswith("spiffe://"):
                continue
            domain = pattern[len("spiffe://") :].split("/", 1)[0]
            if domain and "*" not in domain:
                named.setdefault(domain.lower(), []).append(rule.name)
    return named
