"""External Account Binding MAC keys (RFC 8555 §7.3.4): generation and sealing at rest.

The MAC key must be recoverable to verify bindings, so it cannot be hashed like a token; it
is sealed with AES-256-GCM under a key derived from the key-encryption key instead.
"""

from __future__ import annotations

import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pki.errors import KeyDecryptionError

EAB_KEY_BYTES = 32
_INFO = b"trustd acme eab key v1"
_NONCE_BYTES = 12


def new_eab_key() -> bytes:
    """256 random bits: RFC 8555 §7.3.4 leaves the size to the CA; HS256 wants >= 256."""
    return secrets.token_bytes(EAB_KEY_BYTES)


def _aead(kek: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(kek)
    return AESGCM(derived)


def seal(secret: bytes, kek: bytes, key_id: str) -> bytes:
    """Encrypt *secret* under *kek*, bound to *key_id* (so sealed keys cannot be swapped)."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _aead(kek).encrypt(nonce, secret, key_id.encode())


def unseal(sealed: bytes, kek: bytes, key_id: str) -> bytes:
    """Raises:
    KeyDecryptionError: wrong key-encryption key, wrong key id or corrupt data.
    """
    try:
        return _aead(kek).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], key_id.encode())
    except (InvalidTag, ValueError):
        raise KeyDecryptionError("the EAB key could not be decrypted") from None
