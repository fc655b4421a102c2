"""Accounts (RFC 8555 §7.3): creation (with External Account Binding), contact updates,
deactivation, key rollover."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pki.acme.errors import (
    AccountDoesNotExist,
    ExternalAccountRequired,
    InvalidContact,
    KeyInUse,
    Malformed,
    Unauthorized,
    UnsupportedContact,
)
from pki.acme.jws import parse_key_change, verify_eab
from pki.acme.messages import (
    AccountStatus,
    AccountUpdate,
    AuthorizationStatus,
    NewAccount,
    parse_payload,
)
from pki.acme.states import allowed, check_transition
from trustd.domain.acme import Account
from trustd.errors import NotFound
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.context import AcmeContext, actor, new_id
from trustd.services.acme.eab import EabKeys
from trustd.services.auth import Principal
from trustd.store import acme as store
from trustd.store.db import transaction


def _contacts(contact: Sequence[str]) -> tuple[str, ...]:
    for uri in contact:
        # RFC 8555 §7.3: mailto is the scheme servers are expected to support.
        if not uri.startswith("mailto:"):
            raise UnsupportedContact("only mailto: contact URLs are supported")
        address = uri[len("mailto:") :]
        local, at, domain = address.partition("@")
        if not at or not local or "." not in domain or any(c in address for c in ",?<> "):
            raise InvalidContact("a contact must be mailto:one-address@domain")
    return tuple(contact)


class Accounts:
    def __init__(self, context: AcmeContext, eab_keys: EabKeys) -> None:
        self._context = context
        self._eab_keys = eab_keys

    def new_account(self, auth: Authenticated) -> tuple[Account, bool]:
        """Find or create the account of the signing key (RFC 8555 §7.3). Returns the account
        and whether it was created.

        Raises:
            Malformed: bad payload. AccountDoesNotExist: onlyReturnExisting and no account.
            ExternalAccountRequired: EAB is required and absent. Unauthorized: the binding
            does not verify. InvalidContact, UnsupportedContact: bad contact URLs.
        """
        request = parse_payload(NewAccount, auth.payload)
        thumbprint = auth.key.thumbprint()
        with transaction(self._context.engine) as session:
            existing = store.fetch_account_by_thumbprint(session, thumbprint)
            if existing is not None:
                # §7.3.1: the existing account, unchanged, with status 200.
                return existing, False
            if request.only_return_existing:
                raise AccountDoesNotExist("no account exists for this key")
            contact = _contacts(request.contact)
            eab_key_id: str | None = None
            if request.external_account_binding is not None:
                eab_key_id = verify_eab(
                    request.external_account_binding,
                    auth.key,
                    self._context.urls.new_account,
                    lambda kid: self._eab_keys.mac_key(session, kid),
                )
            elif self._context.settings.acme_eab_required:
                raise ExternalAccountRequired(
                    "this server requires an external account binding; ask the operator for "
                    "an EAB key id and MAC key"
                )
            now = self._context.clock.now()
            account = Account(
                id=new_id(),
                thumbprint=thumbprint,
                jwk=dict(auth.key.members),
                status=AccountStatus.VALID,
                contact=contact,
                eab_key_id=eab_key_id,
                created_at=now,
                updated_at=now,
            )
            store.create_account(session, account)
            self._context.audit.record(
                session,
                actor(account.id),
                "acme:account:created",
                target=account.id,
                details={"eab_key_id": eab_key_id, "thumbprint": thumbprint},
            )
        return account, True

    def update_account(self, auth: Authenticated, account_id: str) -> Account:
        """POST-as-GET, contact update or deactivation (RFC 8555 §7.3.2, §7.3.6).

        Raises:
            Unauthorized: another account's URL. Malformed: bad payload.
        """
        account = auth.own_account(account_id)
        if auth.payload is None:
            return account
        update = parse_payload(AccountUpdate, auth.payload)
        with transaction(self._context.engine) as session:
            current = store.fetch_account(session, account.id, for_update=True)
            assert current is not None
            # Deactivated by an operator since the request was authenticated.
            if current.status is not AccountStatus.VALID:
                raise Unauthorized(f"the account is {current.status}")
            changed = current
            if update.contact is not None:
                changed = replace(changed, contact=_contacts(update.contact))
            if update.status == "deactivated":
                status = check_transition(account.id, current.status, AccountStatus.DEACTIVATED)
                changed = replace(changed, status=status)
                # §7.3.6: pending authorizations of a deactivated account are deactivated.
                store.update_authorization_statuses(
                    session,
                    account_id=account.id,
                    current=AuthorizationStatus.PENDING,
                    target=check_transition(
                        f"of account {account.id}",
                        AuthorizationStatus.PENDING,
                        AuthorizationStatus.DEACTIVATED,
                    ),
                )
            if update.contact is None and update.status is None:
                return current
            changed = replace(changed, updated_at=self._context.clock.now())
            store.update_account(session, changed)
            action = "deactivated" if update.status == "deactivated" else "updated"
            self._context.audit.record(
                session, actor(account.id), f"acme:account:{action}", target=account.id
            )
        return changed

    def key_change(self, auth: Authenticated) -> Account:
        """Roll the account over to a new key (RFC 8555 §7.3.5).

        Raises:
            Malformed: bad inner JWS. Unauthorized: it names another account or the wrong
                old key. KeyInUse: the new key already belongs to an account (409).
        """
        account = auth.require_account()
        if auth.payload is None:
            raise Malformed("keyChange needs the inner JWS as payload")
        urls = self._context.urls
        change = parse_key_change(auth.payload, urls.key_change)
        if change.account != urls.account(account.id):
            raise Unauthorized("the inner keyChange JWS names a different account")
        if not change.old_key.same_key(auth.key):
            raise Unauthorized("'oldKey' is not the account's current key")
        thumbprint = change.new_key.thumbprint()
        with transaction(self._context.engine) as session:
            holder = store.fetch_account_by_thumbprint(session, thumbprint)
            if holder is not None:
                raise KeyInUse(
                    "the new key already belongs to an account", location=urls.account(holder.id)
                )
            current = store.fetch_account(session, account.id, for_update=True)
            assert current is not None
            changed = replace(
                current,
                jwk=dict(change.new_key.members),
                thumbprint=thumbprint,
                updated_at=self._context.clock.now(),
            )
            store.update_account(session, changed)
            self._context.audit.record(
                session,
                actor(account.id),
                "acme:account:key-changed",
                target=account.id,
                details={"thumbprint": thumbprint},
            )
        return changed

    def deactivate(self, principal: Principal, account_id: str) -> Account:
        """Deactivate an account for an operator: it can no longer order or revoke
        (RFC 8555 §7.1.6: server-side, like a client's deactivation). An account already
        deactivated or revoked is returned as it is.

        Raises:
            NotFound: no such account.
        """
        with transaction(self._context.engine) as session:
            current = store.fetch_account(session, account_id, for_update=True)
            if current is None:
                raise NotFound("no such ACME account")
            # Already deactivated (or revoked): final states (§7.1.6), nothing to change.
            if not allowed(current.status, AccountStatus.DEACTIVATED):
                return current
            changed = replace(
                current,
                status=check_transition(account_id, current.status, AccountStatus.DEACTIVATED),
                updated_at=self._context.clock.now(),
            )
            store.update_account(session, changed)
            self._context.audit.record(
                session, principal.name, "acme:account:deactivated", target=account_id
            )
        return changed
