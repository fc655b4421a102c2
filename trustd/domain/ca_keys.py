"""CA key slots (roots, intermediates, JWT keys) as the services see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class CaKeyInfo:
    """One CA key slot. `key_backend` says where the private key lives: `file` keeps
    `encrypted_key`, the PKCS#8 under the key-encryption key (None when the key stays
    upstream), which never leaves the CA service; `pkcs11` keeps only the token object's
    `key_label` and `key_id` (CKA_ID, hex)."""

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
    key_backend: str = "file"
    key_label: str | None = None
    key_id: str | None = None
    # The CA chain the key belongs to (`pki.keys.ca_chain`).
    chain: str = "classical"
