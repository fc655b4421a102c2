"""What an operator lists: accounts, orders, and certificates issued through ACME."""

from __future__ import annotations

from trustd.domain.acme import Account, AcmeCertificate, Order
from trustd.services.acme.context import AcmeContext
from trustd.store import acme as store
from trustd.store.db import transaction

LIST_LIMIT = 1000


class AdminListings:
    def __init__(self, context: AcmeContext) -> None:
        self._context = context

    def accounts(self) -> list[Account]:
        """Every account, oldest first."""
        with transaction(self._context.engine) as session:
            return store.list_accounts(session)

    def orders(self, account_id: str | None, status: str | None) -> list[Order]:
        """The newest 1000 orders, optionally of one account or in one status."""
        with transaction(self._context.engine) as session:
            return store.list_orders(
                session, account_id=account_id, status=status, limit=LIST_LIMIT
            )

    def certificates(self) -> list[AcmeCertificate]:
        """The newest 1000 certificates issued through ACME, with their orders."""
        with transaction(self._context.engine) as session:
            return store.list_acme_certificates(session, limit=LIST_LIMIT)
