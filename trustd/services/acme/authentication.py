"""Request authentication (RFC 8555 §6.2-§6.5): the JWS, the key that signed it, the account
it names, and the nonce it spends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pki.acme.errors import AccountDoesNotExist, BadNonce, Malformed, Unauthorized
from pki.acme.jws import Jwk, Jws, parse_jwk, parse_jws
from pki.acme.messages import AccountStatus
from trustd.domain.acme import Account, AccountObjects, ResourceRef
from trustd.services.acme.context import AcmeContext
from trustd.services.acme.nonces import NonceStore
from trustd.store import acme as store
from trustd.store.db import single_read


@dataclass(frozen=True)
class Authenticated:
    """A verified request: its JWS, the key that signed it, and the account if by `kid`,
    with the objects of the resource the request names read beside it (`objects`)."""

    jws: Jws
    key: Jwk
    account: Account | None
    objects: AccountObjects | None = None

    @property
    def payload(self) -> dict[str, Any] | None:
        return self.jws.json_payload()

    def require_account(self) -> Account:
        """The signing account.

        Raises:
            Malformed: the request was signed with a `jwk`, not an account's `kid`.
        """
        if self.account is None:  # pragma: no cover - authenticate(allow_jwk=False) sets it
            raise Malformed("this request must be signed with the account's 'kid'")
        return self.account

    def require_objects(self) -> AccountObjects:
        """The signing account with the objects of the resource the request names, read
        together (`Authenticator.authenticate` with a `target`).

        Raises:
            Malformed: the request was signed with a `jwk`, not an account's `kid`.
        """
        if self.objects is None:  # pragma: no cover - authenticate(allow_jwk=False) sets it
            raise Malformed("this request must be signed with the account's 'kid'")
        return self.objects

    def own_account(self, account_id: str) -> Account:
        """The signing account, which must be *account_id*.

        Raises:
            Unauthorized: the request is signed by another account (§7.3: an account may
                only read or change itself).
        """
        account = self.require_account()
        if account.id != account_id:
            raise Unauthorized("the request is signed by a different account")
        return account


class Authenticator:
    def __init__(self, context: AcmeContext, nonces: NonceStore) -> None:
        self._context = context
        self._nonces = nonces

    def authenticate(
        self,
        body: bytes,
        url: str,
        *,
        allow_jwk: bool = False,
        target: ResourceRef | None = None,
        on_nonce: Callable[[str], None] = lambda _nonce: None,
    ) -> Authenticated:
        """Verify an ACME request JWS posted to *url* (RFC 8555 §6.2-§6.5). A request signed
        by an account's `kid` reads the account and the resource *target* (the one its URL
        names) in one statement: the services work on what it read. Once the signature
        verifies, the request's nonce is spent and the next one issued in one exchange with
        the nonce store; *on_nonce* receives the next one, for the response's Replay-Nonce
        (§6.5), whether or not the spent one was good.

        Raises:
            Malformed: not a valid flattened JWS, or `jwk` where `kid` is required.
            BadSignatureAlgorithm: the algorithm is not on the allow-list.
            BadPublicKey: the embedded key is not allowed.
            Unauthorized: `url` is not the request URL, or the account is not valid.
            AccountDoesNotExist: `kid` names no account.
            BadNonce: the nonce was not issued, expired or was already used.
        """
        jws = parse_jws(body)
        # RFC 8555 §6.4: the signed url must be the URL the request was sent to.
        if jws.url != url:
            raise Unauthorized("the JWS 'url' header does not match the request URL")
        objects: AccountObjects | None = None
        if jws.jwk is not None:
            # §6.2: jwk only for newAccount and revokeCert (by certificate key).
            if not allow_jwk:
                raise Malformed("this request must be signed with the account's 'kid'")
            key = jws.jwk
        else:
            assert jws.kid is not None
            account_id = self._context.urls.account_id(jws.kid)
            if account_id is not None:
                # One statement: no transaction needed around it (`single_read`).
                with single_read(self._context.engine) as session:
                    objects = store.fetch_account_objects(session, account_id, target)
            if objects is None:
                raise AccountDoesNotExist("the 'kid' names no account on this server")
            # §7.3.6: a deactivated (or revoked) account's requests are refused.
            if objects.account.status is not AccountStatus.VALID:
                raise Unauthorized(f"the account is {objects.account.status}")
            key = parse_jwk(objects.account.jwk)
        jws.verify(key)
        # Checked last so that a request failing any other check leaves its nonce usable.
        if jws.nonce is None:
            raise BadNonce("the request carries no nonce")
        good, fresh = self._nonces.exchange(jws.nonce)
        on_nonce(fresh)
        if not good:
            raise BadNonce("the nonce is unknown, expired or already used")
        return Authenticated(
            jws=jws,
            key=key,
            account=objects.account if objects is not None else None,
            objects=objects,
        )
