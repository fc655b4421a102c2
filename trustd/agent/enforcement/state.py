"""The verdicts an agent holds: applied from the sync channel's full states and deltas (the
wire model `trustd.domain.verdicts.VerdictDelta`), validated before anything changes, so a
bad update leaves the last good state in place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from trustd.agent.errors import InvalidVerdicts
from trustd.domain.verdicts import PolicyKey, VerdictDelta

__all__ = ["PolicyKey", "VerdictTable", "parse_delta"]


def parse_delta(update: VerdictDelta | Mapping[str, Any]) -> VerdictDelta:
    """The wire form of a verdict update, checked.

    Raises:
        InvalidVerdicts: it does not follow the wire model.
    """
    if isinstance(update, VerdictDelta):
        return update
    try:
        return VerdictDelta.model_validate(update)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidVerdicts(f"malformed verdict update: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class VerdictTable:
    revision: int = 0
    identities: Mapping[str, int] = field(default_factory=dict)
    ipcache: Mapping[str, int] = field(default_factory=dict)
    policy: Mapping[PolicyKey, bool] = field(default_factory=dict)
    revoked: frozenset[int] = frozenset()
    # Whether a deny also cuts connections admitted before it (the mesh policy's
    # `established: cut`).
    cut_established: bool = False
    # The mesh policy for L7 decisions: revision, modules, data.
    l7: Mapping[str, Any] | None = None

    def allows(self, dst: int, src: int, port: int, proto: int) -> bool:
        """The L4 verdict as the datapath computes it: exact port first, then any port."""
        if src in self.revoked:
            return False
        found = self.policy.get(PolicyKey(dst, src, port, proto))
        if found is None:
            found = self.policy.get(PolicyKey(dst, src, 0, proto), False)
        return found

    def applied(self, update: VerdictDelta | Mapping[str, Any]) -> VerdictTable:
        """A new table with `update` (a full state when `base` is 0, else a delta from
        this table's revision) applied; this table is left as it was.

        Raises:
            InvalidVerdicts: malformed update, a revision gap, or an unknown identity.
        """
        delta = parse_delta(update)
        if delta.base != 0 and delta.base != self.revision:
            raise InvalidVerdicts(
                f"revision gap: holding {self.revision}, delta is from {delta.base}"
            )
        if delta.revision <= delta.base:
            raise InvalidVerdicts(f"revision {delta.revision} does not follow {delta.base}")
        full = delta.base == 0
        changes = delta.changes
        identities = {} if full else dict(self.identities)
        ipcache = {} if full else dict(self.ipcache)
        policy = {} if full else dict(self.policy)
        revoked = set() if full else set(self.revoked)
        for spiffe_id in changes.identities.remove:
            identities.pop(spiffe_id, None)
        identities.update(changes.identities.set)
        for prefix in changes.ipcache.remove:
            ipcache.pop(prefix, None)
        ipcache.update(changes.ipcache.set)
        for key in changes.policy.remove:
            policy.pop(key, None)
        policy.update((v.key, v.allow) for v in changes.policy.set)
        revoked.difference_update(changes.revoked.remove)
        revoked.update(changes.revoked.set)
        known = set(identities.values())
        # Only what changed can name an unknown number, unless identities went away.
        whole = full or bool(changes.identities.remove or changes.identities.set)
        cached = ipcache.items() if whole else changes.ipcache.set.items()
        for prefix, number in cached:
            if number not in known:
                raise InvalidVerdicts(f"ipcache {prefix}: unknown identity {number}")
        keys = policy.keys() if whole else [v.key for v in changes.policy.set]
        for key in keys:
            for number in (key.dst, key.src):
                if number not in known:
                    raise InvalidVerdicts(f"policy {tuple(key)}: unknown identity {number}")
        l7 = delta.l7.model_dump() if delta.l7 is not None else self.l7
        cut = delta.cut_established
        if cut is None:
            cut = False if full else self.cut_established
        return VerdictTable(
            delta.revision,
            identities,
            ipcache,
            policy,
            frozenset(revoked),
            cut,
            l7,
        )
