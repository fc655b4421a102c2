"""Where CA private keys live: one interface, two backends.

``file`` keeps a key as encrypted PKCS#8 beside its row (the key-encryption key opens it);
``pkcs11`` keeps it in a PKCS#11 token (:mod:`pki.keys.token`), where it is generated,
never leaves, and makes every signature. Both hand the CA a :data:`pki.keys.PrivateKey`, so
the certificate, CRL, OCSP and JWT code paths are the same whichever backend holds the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pki.errors import CaError
from pki.keys import KeyType as KeyType
from pki.keys import (
    PrivateKey,
    PublicKey,
    decrypt_private_key,
    encrypt_private_key,
    generate_private_key,
    same_public_key,
)


class BackendName(StrEnum):
    FILE = "file"
    PKCS11 = "pkcs11"


@dataclass(frozen=True)
class StoredKey:
    """What the database keeps about a private key: the sealed PKCS#8 for ``file``, the
    token object's label and CKA_ID (hex) for ``pkcs11``. Never the key itself in the clear.
    """

    backend: BackendName
    encrypted_key: bytes | None = field(default=None, repr=False)
    label: str | None = None
    key_id: str | None = None


class KeyBackend(Protocol):
    """A place that generates CA keys and gives back signing objects for them."""

    @property
    def name(self) -> BackendName: ...

    def generate(self, key_type: KeyType, label: str) -> tuple[PrivateKey, StoredKey]:
        """A new key of *key_type*, and what to store so :meth:`load` finds it again."""
        ...

    def load(self, stored: StoredKey, public: PublicKey) -> PrivateKey:
        """The signing object for *stored*, whose public half must be *public*.

        Raises:
            CaError, KeyDecryptionError, KeyUnavailable: the key cannot be used.
        """
        ...

    def location(self, stored: StoredKey) -> str:
        """A one-line description of where *stored* lives, for `trustd ca keys`."""
        ...


class FileBackend:
    """Keys as PKCS#8 encrypted under the key-encryption key, stored in their database row."""

    def __init__(self, kek: bytes) -> None:
        self._kek = kek

    @property
    def name(self) -> BackendName:
        return BackendName.FILE

    def generate(self, key_type: KeyType, label: str) -> tuple[PrivateKey, StoredKey]:
        key = generate_private_key(key_type)
        return key, StoredKey(BackendName.FILE, encrypted_key=encrypt_private_key(key, self._kek))

    def load(self, stored: StoredKey, public: PublicKey) -> PrivateKey:
        if stored.encrypted_key is None:
            raise CaError("the key is not held by trustd (no encrypted key is stored)")
        key = decrypt_private_key(stored.encrypted_key, self._kek)
        if not same_public_key(key.public_key(), public):
            raise CaError("the stored private key does not match the stored public key")
        return key

    def location(self, stored: StoredKey) -> str:
        return "encrypted PKCS#8 in the database"
