"""The URLs of ACME resources. Clients sign the exact URL they post to (RFC 8555 §6.4), so
every URL the server hands out and every URL it checks comes from here."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "/acme"


@dataclass(frozen=True)
class AcmeUrls:
    base: str  # settings.base_url, no trailing slash

    @property
    def root(self) -> str:
        return self.base + PREFIX

    def url(self, path: str) -> str:
        """The absolute URL of a request path such as `/acme/new-order`."""
        return self.base + path

    @property
    def directory(self) -> str:
        return f"{self.root}/directory"

    @property
    def new_nonce(self) -> str:
        return f"{self.root}/new-nonce"

    @property
    def new_account(self) -> str:
        return f"{self.root}/new-account"

    @property
    def new_order(self) -> str:
        return f"{self.root}/new-order"

    @property
    def revoke_cert(self) -> str:
        return f"{self.root}/revoke-cert"

    @property
    def key_change(self) -> str:
        return f"{self.root}/key-change"

    @property
    def renewal_info(self) -> str:
        return f"{self.root}/renewal-info"

    def account(self, account_id: str) -> str:
        return f"{self.root}/account/{account_id}"

    def account_id(self, kid: str) -> str | None:
        """The account id a `kid` names, or None if it is not one of our account URLs."""
        prefix = f"{self.root}/account/"
        if not kid.startswith(prefix):
            return None
        rest = kid[len(prefix) :]
        return rest if rest and "/" not in rest else None

    def orders(self, account_id: str) -> str:
        return f"{self.root}/account/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.root}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.root}/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.root}/authz/{authz_id}"

    def challenge(self, challenge_id: str) -> str:
        return f"{self.root}/chall/{challenge_id}"

    def certificate(self, serial: str, alternate: int = 0) -> str:
        suffix = f"/{alternate}" if alternate else ""
        return f"{self.root}/cert/{serial}{suffix}"
