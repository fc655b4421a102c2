"""Request authentication (RFC 8555 §6.2-§6.5): the JWS, the key that signed it, the account
it names, and the nonce it spends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pki.acme.errors import AccountDoesNotExist, BadNonce, Malformed, Unauthorized
from pki.acme.jws import Jwk, Jws, parse_jwk, parse_jws
from pki.acme.messages import AccountStatus
from trustd.domain.acme import Account
from trustd.services.acme.context import AcmeContext
from trustd.services.acme.nonces import NonceStore
from trustd.store import acme as store
from trustd.store.db import transaction


@dataclass(frozen=True)
class Authenticated:
    """A verified request: its JWS, the key that signed it, and the account if by `kid`."""

    jws: Jws
    key: Jwk
    account: Account | None

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

    def authenticate(self, body: bytes, url: str, *, allow_jwk: bool = False) -> Authenticated:
        """Verify an ACME request JWS posted to *url* (RFC 8555 §6.2-§6.5).

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
        account: Account | None = None
        if jws.jwk is not None:
            # §6.2: jwk only for newAccount and revokeCert (by certificate key).
            if not allow_jwk:
                raise Malformed("this request must be signed with the account's 'kid'")
            key = jws.jwk
        else:
            assert jws.kid is not None
            account_id = self._context.urls.account_id(jws.kid)
            if account_id is not None:
                with transaction(self._context.engine) as session:
                    account = store.fetch_account(session, account_id)
            if account is None:
                raise AccountDoesNotExist("the 'kid' names no account on this server")
            # §7.3.6: a deactivated (or revoked) account's requests are refused.
            if account.status is not AccountStatus.VALID:
                raise Unauthorized(f"the account is {account.status}")
            key = parse_jwk(account.jwk)
        jws.verify(key)
        # Checked last so that a request failing any other check leaves its nonce usable.
        if jws.nonce is None or not self._nonces.redeem(jws.nonce):
            raise BadNonce("the nonce is unknown, expired or already used")
        return Authenticated(jws=jws, key=key, account=account)
