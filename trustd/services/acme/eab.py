"""External Account Binding keys (RFC 8555 §7.3.4): created and revoked by an operator, read
when an account binds to one."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from sqlmodel import Session

from pki.acme.eab import new_eab_key, seal, unseal
from trustd.domain.acme import CreatedEabKey, EabKey
from trustd.errors import NotFound
from trustd.services.acme.context import AcmeContext
from trustd.services.auth import Principal
from trustd.store import acme as store
from trustd.store.db import transaction


class EabKeys:
    def __init__(self, context: AcmeContext, kek: bytes) -> None:
        self._context = context
        self._kek = kek

    def mac_key(self, session: Session, key_id: str) -> bytes | None:
        """The MAC key of the EAB key *key_id*, or None if there is none, or it is revoked or
        expired (the binding then fails as unauthorized)."""
        found = store.fetch_sealed_eab_key(session, key_id)
        if found is None or found.key.revoked_at is not None:
            return None
        if found.key.expires_at is not None and found.key.expires_at <= self._context.clock.now():
            return None
        return unseal(found.sealed_mac_key, self._kek, found.key.id)

    def create(
        self,
        principal: Principal,
        label: str,
        dns_suffixes: Sequence[str],
        ip_networks: Sequence[str],
        ttl: timedelta | None,
    ) -> CreatedEabKey:
        """Create an EAB key; its MAC key is returned here only.

        Raises:
            StoreUnavailable: the database is down.
        """
        secret = new_eab_key()
        now = self._context.clock.now()
        key = EabKey(
            id="eab_" + secrets.token_urlsafe(12),
            label=label,
            dns_suffixes=tuple(s.lower().strip(".") for s in dns_suffixes),
            ip_networks=tuple(ip_networks),
            created_by=principal.name,
            created_at=now,
            expires_at=now + ttl if ttl else None,
            revoked_at=None,
        )
        with transaction(self._context.engine) as session:
            store.create_eab_key(session, key, seal(secret, self._kek, key.id))
            self._context.audit.record(
                session,
                principal.name,
                "acme:eab-key:created",
                target=key.id,
                details={"label": label, "dns_suffixes": list(key.dns_suffixes)},
            )
        return CreatedEabKey(key, secret)

    def list(self) -> list[EabKey]:
        """Every EAB key, oldest first, without MAC keys."""
        with transaction(self._context.engine) as session:
            return store.list_eab_keys(session)

    def revoke(self, principal: Principal, key_id: str) -> None:
        """Revoke the EAB key *key_id*: no new account can bind with it.

        Raises:
            NotFound: no such key.
        """
        with transaction(self._context.engine) as session:
            key = store.fetch_eab_key(session, key_id, for_update=True)
            if key is None:
                raise NotFound("no such EAB key")
            store.update_eab_key(session, replace(key, revoked_at=self._context.clock.now()))
            self._context.audit.record(
                session, principal.name, "acme:eab-key:revoked", target=key_id
            )
