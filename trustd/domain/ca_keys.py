"""CA key slots (roots, intermediates, JWT keys) as the services see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class CaKeyInfo:
    """One CA key slot. `encrypted_key` is the PKCS#8 under the key-encryption key (None
    when the key stays upstream); it never leaves the CA service."""

    kid: str
    kind: str
    status: str
    key_type: str
    public_key_pem: str
    not_before: datetime
    not_after: datetime
    created_at: datetime
    certificate_pem: str | None = None
    chain_pem: str = ""
    upstream: bool = False
    issuer_kid: str | None = None
    cross_certificate_pem: str | None = None
    status_changed_at: datetime | None = None
    encrypted_key: bytes | None = field(default=None, repr=False)
