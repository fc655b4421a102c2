"""The verdict wire model: what trustd sends an enforcing agent on the sync channel, one typed
model used by the server that builds it and the agent that applies it.

Keys are numeric where the datapath's are (trustd/agent/bpf/enforce.c): a policy verdict is
`[dst, src, port, proto, allow]` (identity numbers, port 0 for any port, IANA protocol
number), a denied identity (`revoked`: a quarantined identity, trustd.services.quarantines)
is its number. SPIFFE IDs and IP prefixes (IPv4 and IPv6) stay strings, as the
identities and IP cache sections key them. `base` 0 carries the full state; otherwise the
changes since revision `base`, which the agent must hold.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

# Identity 0 is "unknown" (an address in no entry, enforce.c `identity_of`); numbers are the
# u32 the maps hold.
IdentityNumber = Annotated[StrictInt, Field(gt=0, lt=2**32)]
# ICMP, TCP, UDP: the protocols the datapath judges (IANA protocol numbers).
PROTOCOL_NUMBERS = frozenset({1, 6, 17})


def _prefix(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 prefix") from None


# An IPv4 or IPv6 prefix in canonical form ("10.0.0.1/32", "fd00::1/128"); host bits must
# be clear. The datapath keys the two families apart (enforce.c `struct addr`).
Prefix = Annotated[str, AfterValidator(_prefix)]


class PolicyKey(NamedTuple):
    """A policy map key: (destination identity, source identity, port, protocol)."""

    dst: StrictInt
    src: StrictInt
    port: StrictInt
    proto: StrictInt


class PolicyVerdict(NamedTuple):
    """One policy map entry: its key and whether it allows."""

    dst: StrictInt
    src: StrictInt
    port: StrictInt
    proto: StrictInt
    allow: StrictBool

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.dst, self.src, self.port, self.proto)


_K = TypeVar("_K", PolicyKey, PolicyVerdict)


def _checked_key(key: _K) -> _K:
    for number in (key.dst, key.src):
        if not 0 < number < 2**32:
            raise ValueError(f"{number!r} is not an identity number")
    if not 0 <= key.port < 65536:
        raise ValueError(f"port {key.port} is out of range")
    if key.proto not in PROTOCOL_NUMBERS:
        raise ValueError(f"protocol {key.proto} is not judged by the datapath")
    return key


CheckedKey = Annotated[PolicyKey, AfterValidator(_checked_key)]
CheckedVerdict = Annotated[PolicyVerdict, AfterValidator(_checked_key)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityChanges(_Wire):
    """SPIFFE ID -> number."""

    set: dict[str, IdentityNumber] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class IpcacheChanges(_Wire):
    """IPv4 or IPv6 prefix -> identity number (longest prefix wins)."""

    set: dict[Prefix, IdentityNumber] = Field(default_factory=dict)
    remove: list[Prefix] = Field(default_factory=list)


class PolicyChanges(_Wire):
    """Verdicts by key; a key the datapath does not find is denied."""

    set: list[CheckedVerdict] = Field(default_factory=list)
    remove: list[CheckedKey] = Field(default_factory=list)


class RevokedChanges(_Wire):
    """Identity numbers whose traffic is denied whatever the policy says: the quarantined
    identities (the section keeps the datapath's name, enforce.c `trustd_revoked`)."""

    set: list[IdentityNumber] = Field(default_factory=list)
    remove: list[IdentityNumber] = Field(default_factory=list)


class VerdictChanges(_Wire):
    identities: IdentityChanges = Field(default_factory=IdentityChanges)
    ipcache: IpcacheChanges = Field(default_factory=IpcacheChanges)
    policy: PolicyChanges = Field(default_factory=PolicyChanges)
    revoked: RevokedChanges = Field(default_factory=RevokedChanges)

    @property
    def empty(self) -> bool:
        return not any(
            section.set or section.remove
            for section in (self.identities, self.ipcache, self.policy, self.revoked)
        )


class L7Policy(_Wire):
    """The mesh policy for the agent's own L7 decisions (ext_authz): the policy revision,
    the mesh modules and `data.mesh`."""

    revision: int = Field(ge=0)
    modules: dict[str, str]
    data: dict[str, Any]


class VerdictDelta(_Wire):
    """Verdict changes for one node. `base` 0: the full state (replace everything held)."""

    revision: int = Field(gt=0)
    base: int = Field(ge=0)
    changes: VerdictChanges = Field(default_factory=VerdictChanges)
    # Whether a deny also cuts connections admitted before it: sent with a full state and
    # when it changed (None: as held).
    cut_established: StrictBool | None = None
    # Sent when the mesh policy changed since `base` (always with a full state).
    l7: L7Policy | None = None


class VerdictState(_Wire):
    """One compiled verdict revision, shared by every node: the sections as sent, except
    `policy`, which maps each destination SPIFFE ID to the verdicts for its traffic (a
    node's state takes those of its local destinations)."""

    identities: dict[str, IdentityNumber] = Field(default_factory=dict)
    ipcache: dict[Prefix, IdentityNumber] = Field(default_factory=dict)
    policy: dict[str, list[CheckedVerdict]] = Field(default_factory=dict)
    revoked: list[IdentityNumber] = Field(default_factory=list)
    # The mesh policy's `established` setting: "cut" makes a deny cut established
    # connections too; anything else keeps them (a connection is judged by its SYN).
    cut_established: StrictBool = False
