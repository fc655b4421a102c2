"""CA keys in a PKCS#11 token (PKCS#11 v2.40, through python-pkcs11).

Keys are generated in the token as non-extractable, sensitive EC keys (CKA_EXTRACTABLE
false, CKA_SENSITIVE true: PKCS#11 v2.40 §4.9), so no private key byte ever reaches this
process. A :class:`TokenKey` implements cryptography's ``EllipticCurvePrivateKey``
interface with ``sign`` made by the token: cryptography's certificate, CRL and OCSP
builders and PyJWT only ever call ``sign`` and ``public_key`` on the issuer key, so they
build and encode everything themselves and the token signs the to-be-signed bytes.

The hash is computed here and the token signs the digest with ``CKM_ECDSA`` (SoftHSM 2.6
has no ``CKM_ECDSA_SHA256``); :class:`pki.keys.held.HeldEcKey` DER-encodes the raw r‖s.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from pki.errors import CaError, KeyUnavailable
from pki.keys import KeyType, PrivateKey, PublicKey, allowed_public_key, same_public_key
from pki.keys.backends import BackendName, StoredKey
from pki.keys.held import HeldEcKey

_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}

# PKCS#11 v2.40 §4.9: the private key never leaves the token, not even wrapped.
_PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.EXTRACTABLE: False,
    Attribute.SENSITIVE: True,
    Attribute.SIGN: True,
    Attribute.DERIVE: False,
    Attribute.PRIVATE: True,
}


def _unavailable(what: str, exc: Exception) -> NoReturn:
    # The exception's class names the PKCS#11 return value (CKR_*); it never holds key bytes.
    raise KeyUnavailable(f"PKCS#11 token: {what} failed ({type(exc).__name__})") from None


class Pkcs11Backend:
    """One logged-in session on the token labelled *token_label* of *module*.

    PKCS#11 v2.40 §5.6 lets one session run one operation at a time: signatures are
    serialised by a lock (a CA signs one certificate in far less time than a request takes).
    """

    def __init__(self, module: Path, token_label: str, pin: str) -> None:
        """Load *module*, find the token and log in.

        Raises:
            CaError: the module cannot be loaded, there is no such token, or the PIN is
                wrong or locked. None of these falls back to file keys.
        """
        self._token_label = token_label
        self._lock = threading.Lock()
        # Private key objects by CKA_ID: a search per signature would double its cost.
        self._handles: dict[bytes, pkcs11.SignMixin] = {}
        if not module.is_file():
            raise CaError(f"PKCS#11 module {str(module)!r} does not exist", module=str(module))
        try:
            lib = pkcs11.lib(str(module))
        except (OSError, RuntimeError) as exc:
            raise CaError(
                f"PKCS#11 module {str(module)!r} could not be loaded ({type(exc).__name__})",
                module=str(module),
            ) from None
        try:
            token = lib.get_token(token_label=token_label)
        except p11.NoSuchToken:
            raise CaError(
                f"PKCS#11 token {token_label!r} was not found in {str(module)!r}",
                token=token_label,
            ) from None
        except p11.MultipleTokensReturned:
            raise CaError(f"several PKCS#11 tokens are labelled {token_label!r}") from None
        try:
            self._session = token.open(rw=True, user_pin=pin)
        except p11.UserAlreadyLoggedIn:
            # PKCS#11 v2.40 §5.6: login state belongs to the application, not the session;
            # another session of this process has already logged in with the PIN.
            self._session = token.open(rw=True)
        except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
            raise CaError(
                f"PKCS#11 token {token_label!r} refused the PIN (TRUSTD_PKCS11_PIN or "
                "TRUSTD_PKCS11_PIN_FILE)",
                token=token_label,
            ) from None
        except p11.PinLocked:
            raise CaError(f"PKCS#11 token {token_label!r}: the user PIN is locked") from None
        except p11.PKCS11Error as exc:
            raise CaError(
                f"PKCS#11 token {token_label!r} could not be opened ({type(exc).__name__})",
                token=token_label,
            ) from None

    @property
    def name(self) -> BackendName:
        return BackendName.PKCS11

    @property
    def token_label(self) -> str:
        return self._token_label

    def generate(self, key_type: KeyType, label: str) -> tuple[PrivateKey, StoredKey]:
        """Generate an EC key pair in the token, stored there under *label* and a random
        CKA_ID.

        Raises:
            CaError: *key_type* is not an EC key type (only EC keys are made in tokens).
            KeyUnavailable: the token failed.
        """
        curve = _CURVES.get(KeyType(key_type))
        if curve is None:
            raise CaError(
                f"the pkcs11 key backend makes EC P-256 or P-384 keys, not {key_type}",
                key_type=str(key_type),
            )
        key_id = secrets.token_bytes(16)
        try:
            with self._lock:
                params = self._session.create_domain_parameters(
                    pkcs11.KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve.name)},
                    local=True,
                )
                pub, _ = params.generate_keypair(
                    id=key_id,
                    label=label,
                    store=True,
                    public_template={Attribute.VERIFY: True},
                    private_template=_PRIVATE_TEMPLATE,
                )
                public = _public_key(pub)
        except p11.PKCS11Error as exc:
            _unavailable("key generation", exc)
        stored = StoredKey(BackendName.PKCS11, label=label, key_id=key_id.hex())
        return TokenKey(self, key_id, public), stored

    def load(self, stored: StoredKey, public: PublicKey) -> PrivateKey:
        """The token's key with CKA_ID *stored.key_id*, checked against *public*.

        Raises:
            CaError: the token holds no such key, or one with another public key.
            KeyUnavailable: the token failed.
        """
        if stored.key_id is None:
            raise CaError("a pkcs11 key row has no key id")
        key_id = bytes.fromhex(stored.key_id)
        try:
            with self._lock:
                self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
                public_obj = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=key_id)
                assert isinstance(public_obj, pkcs11.PublicKey)
                found = _public_key(public_obj)
        except p11.NoSuchKey:
            raise CaError(
                f"PKCS#11 token {self._token_label!r} holds no key {stored.label!r} "
                f"(id {stored.key_id})",
                token=self._token_label,
                key_id=stored.key_id,
            ) from None
        except p11.PKCS11Error as exc:
            _unavailable("key lookup", exc)
        if not same_public_key(found, public):
            raise CaError(
                f"PKCS#11 key {stored.label!r} (id {stored.key_id}) is not the key the "
                "database records",
                key_id=stored.key_id,
            )
        return TokenKey(self, key_id, found)

    def location(self, stored: StoredKey) -> str:
        return f"PKCS#11 token {self._token_label!r}, label {stored.label!r}, id {stored.key_id}"

    def sign_digest(self, key_id: bytes, digest: bytes) -> bytes:
        """Raw ECDSA r‖s over *digest* by the token's key *key_id*.

        Raises:
            KeyUnavailable: the token, the session or the key failed.
        """
        try:
            with self._lock:
                key = self._handles.get(key_id)
                if key is None:
                    found = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
                    assert isinstance(found, pkcs11.SignMixin)
                    key = self._handles[key_id] = found
                try:
                    signature: bytes = key.sign(digest, mechanism=Mechanism.ECDSA)
                except p11.PKCS11Error:
                    # A handle found earlier may be stale (the object was deleted or the
                    # session reset): the next signature looks the key up again.
                    self._handles.pop(key_id, None)
                    raise
                return signature
        except p11.PKCS11Error as exc:
            _unavailable("signature", exc)

    def close(self) -> None:
        with self._lock:
            self._session.close()


def _public_key(obj: pkcs11.PublicKey) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(encode_ec_public_key(obj))
    checked = allowed_public_key(key)
    assert isinstance(checked, ec.EllipticCurvePublicKey)
    return checked


class TokenKey(HeldEcKey):
    """An EC private key that lives in a PKCS#11 token: it signs, and does nothing else."""

    misuse = CaError

    def __init__(
        self, backend: Pkcs11Backend, key_id: bytes, public: ec.EllipticCurvePublicKey
    ) -> None:
        super().__init__(public)
        self._backend = backend
        self._key_id = key_id

    @property
    def device(self) -> str:
        return "a PKCS#11 token"

    def sign_digest(self, digest: bytes) -> bytes:
        return self._backend.sign_digest(self._key_id, digest)

    def __repr__(self) -> str:
        return f"TokenKey(id={self._key_id.hex()}, curve={self.curve.name})"
