"""Key generation, the key-type allow-list, key identifiers and at-rest key encryption.

Nothing here logs or formats key material: errors name the key *type* only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import ssl
import stat
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    mldsa,
    rsa,
    x448,
    x25519,
)
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from pki.errors import CaError, KeyDecryptionError, WeakKey

# ML-DSA (FIPS 204) in X.509 is RFC 9881: pure ML-DSA, empty context, no pre-hash.
MlDsaPrivateKey = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
MlDsaPublicKey = mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
PrivateKey = (
    ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | MlDsaPrivateKey
)
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey | MlDsaPublicKey


class KeyType(StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    ED25519 = "ed25519"
    RSA_2048 = "rsa-2048"
    ML_DSA_44 = "ml-dsa-44"
    ML_DSA_65 = "ml-dsa-65"
    ML_DSA_87 = "ml-dsa-87"

    @property
    def post_quantum(self) -> bool:
        return self in (KeyType.ML_DSA_44, KeyType.ML_DSA_65, KeyType.ML_DSA_87)


ALLOWED_KEYS_TEXT = (
    "EC P-256/P-384/P-521, RSA 2048-8192 bits with e=65537, Ed25519, or ML-DSA-44/65/87"
)

_ALLOWED_CURVES: dict[str, str] = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
RSA_MIN_BITS = 2048
# Larger moduli are not stronger in any way that matters here, but they make every
# verification slower: an 16k-bit key in a CSR is a cheap denial-of-service lever.
RSA_MAX_BITS = 8192
RSA_EXPONENT = 65537

# The first OpenSSL that verifies (and signs TLS handshakes with) ML-DSA.
OPENSSL_ML_DSA = (3, 5)

# A key-encryption key shorter than this is a password, not a key.
MIN_KEK_BYTES = 16


def ml_dsa_tls_problem(openssl: tuple[int, ...] = ssl.OPENSSL_VERSION_INFO) -> str | None:
    """Why ML-DSA certificates cannot be used over this Python's TLS (None: they can).

    trustd's own TLS (the server's listener, agents' mTLS to it, workloads' Python `ssl`)
    is OpenSSL's: before 3.5 it has no ML-DSA, so it cannot verify an ML-DSA signature in a
    chain nor sign a handshake with an ML-DSA key. An ML-DSA trust domain there would issue
    what none of its clients can use, so it is refused rather than half-working.
    """
    if tuple(openssl[:2]) >= OPENSSL_ML_DSA:
        return None
    have = ".".join(str(part) for part in openssl[:3])
    need = ".".join(str(part) for part in OPENSSL_ML_DSA)
    return (
        f"ML-DSA needs OpenSSL {need} or later for TLS, and this Python's ssl is OpenSSL "
        f"{have}: it cannot verify ML-DSA chains (see README, Post-quantum)"
    )


def generate_private_key(kt: KeyType) -> PrivateKey:
    """Generate a fresh private key of type *kt*.

    Raises:
        ValueError: *kt* is not a :class:`KeyType`.
    """
    match KeyType(kt):
        case KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case KeyType.ED25519:
            return ed25519.Ed25519PrivateKey.generate()
        case KeyType.RSA_2048:
            return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=2048)
        case KeyType.ML_DSA_44:
            return mldsa.MLDSA44PrivateKey.generate()
        case KeyType.ML_DSA_65:
            return mldsa.MLDSA65PrivateKey.generate()
        case KeyType.ML_DSA_87:
            return mldsa.MLDSA87PrivateKey.generate()


_ML_DSA: dict[int, tuple[type, type]] = {
    44: (mldsa.MLDSA44PublicKey, mldsa.MLDSA44PrivateKey),
    65: (mldsa.MLDSA65PublicKey, mldsa.MLDSA65PrivateKey),
    87: (mldsa.MLDSA87PublicKey, mldsa.MLDSA87PrivateKey),
}


def is_ml_dsa(key: object) -> bool:
    """Whether *key* (public or private) is an ML-DSA key."""
    return any(isinstance(key, classes) for classes in _ML_DSA.values())


# The CA chain a key type's certificates are signed by. One chain of classical keys (EC,
# RSA, Ed25519: any of them signs any classical leaf) and one per ML-DSA parameter set: an
# ML-DSA leaf under a classical CA would be only as strong as the CA's signature, and a
# classical leaf under an ML-DSA CA would not verify where ML-DSA cannot (OpenSSL < 3.5).
CLASSICAL_CHAIN = "classical"


def ca_chain(kt: KeyType) -> str:
    """The name of the CA chain that signs certificates for keys of type *kt*."""
    kt = KeyType(kt)
    return str(kt) if kt.post_quantum else CLASSICAL_CHAIN


def key_type_of(key: object) -> KeyType | None:
    """The :class:`KeyType` *key* (public or private) is an instance of; None when none is
    (e.g. EC P-521 or RSA-4096, allowed in CSRs but never generated here)."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return KeyType.RSA_2048 if key.key_size == 2048 else None
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeyType.ED25519
    for level, classes in _ML_DSA.items():
        if isinstance(key, classes):
            return KeyType(f"ml-dsa-{level}")
    return None


def key_chain(key: object) -> str:
    """The CA chain that signs a certificate for *key* (see :func:`ca_chain`)."""
    kt = key_type_of(key)
    return ca_chain(kt) if kt is not None else CLASSICAL_CHAIN


def describe_key(key: object) -> str:
    """A short human description of a key's type, e.g. ``EC secp256k1`` or ``RSA-1024``.

    Used in error messages in place of any key material.
    """
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    for level, classes in _ML_DSA.items():
        if isinstance(key, classes):
            return f"ML-DSA-{level}"
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519"
    if isinstance(key, x448.X448PublicKey | x448.X448PrivateKey):
        return "X448"
    return type(key).__name__


def allowed_public_key(pub: object) -> PublicKey:
    """Return *pub* narrowed to :data:`PublicKey` if it is on the allow-list.

    Raises:
        WeakKey: *pub* is not an allowed key type or size.
    """

    def weak(why: str) -> WeakKey:
        return WeakKey(
            f"{describe_key(pub)} key is not allowed ({why}); allowed: {ALLOWED_KEYS_TEXT}",
            key_type=describe_key(pub),
        )

    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in _ALLOWED_CURVES:
            raise weak("curve not on the allow-list")
        return pub
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < RSA_MIN_BITS:
            raise weak(f"modulus shorter than {RSA_MIN_BITS} bits")
        if pub.key_size > RSA_MAX_BITS:
            raise weak(f"modulus longer than {RSA_MAX_BITS} bits")
        if pub.public_numbers().e != RSA_EXPONENT:
            raise weak(f"public exponent is not {RSA_EXPONENT}")
        return pub
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub
    if isinstance(pub, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey):
        return pub
    if isinstance(pub, x25519.X25519PublicKey | x448.X448PublicKey):
        raise weak("key-agreement only, cannot sign")
    raise weak("key type not on the allow-list")


def check_public_key(pub: object) -> None:
    """Insist that *pub* is an allowed public key.

    Raises:
        WeakKey: DSA, EC curves other than P-256/P-384/P-521, RSA outside 2048-8192 bits or
            with e != 65537, X25519/X448, Ed448, or anything else.
    """
    allowed_public_key(pub)


def public_key_of(key: PrivateKey) -> PublicKey:
    """The public half of *key*."""
    return key.public_key()


def spki_der(pub: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of *pub*."""
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared by SubjectPublicKeyInfo DER)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def key_id(pub: PublicKey) -> str:
    """Stable key id: base64url (no padding) of SHA-256(SPKI DER), first 32 characters.

    Derived from the key itself so the same key always gets the same ``kid`` in JWT headers
    and bundles, and two keys cannot share one by accident.
    """
    digest = hashlib.sha256(spki_der(pub)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")[:32]


def jws_algorithm(key: PrivateKey | PublicKey) -> str:
    """The JWS ``alg`` (RFC 7518 §3) that *key* signs with.

    ES256/ES384/ES512 by curve, RS256 for RSA, EdDSA (RFC 8037) for Ed25519.

    Raises:
        WeakKey: *key* is of a type or curve with no JWS algorithm here.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        alg = by_curve.get(key.curve.name)
        if alg is None:
            raise WeakKey(
                f"EC {key.curve.name} key has no JWS algorithm", key_type=describe_key(key)
            )
        return alg
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if is_ml_dsa(key):
        raise _no_jose(key)
    raise WeakKey(f"{describe_key(key)} key has no JWS algorithm", key_type=describe_key(key))


# The keys JOSE (and so PyJWT) signs and verifies with.
JosePrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
JosePublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def _no_jose(key: object) -> WeakKey:
    # ML-DSA has no JWS `alg` in the IANA JOSE registry yet (only the drafts of
    # draft-ietf-cose-dilithium), and JWT-SVID §3 allows only RS*, ES* and PS*.
    return WeakKey(
        f"{describe_key(key)} keys cannot sign or verify JWTs: ML-DSA has no registered "
        "JWS algorithm",
        key_type=describe_key(key),
    )


def jose_private_key(key: PrivateKey) -> JosePrivateKey:
    """*key*, which must be one JOSE signs with.

    Raises:
        WeakKey: an ML-DSA key.
    """
    if isinstance(key, mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey):
        raise _no_jose(key)
    return key


def jose_public_key(key: PublicKey) -> JosePublicKey:
    """*key*, which must be one JOSE verifies with.

    Raises:
        WeakKey: an ML-DSA key.
    """
    if isinstance(key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey):
        raise _no_jose(key)
    return key


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The hash to pair with *key* when signing certificates.

    Matches the hash strength to the key (SHA-384 for P-384, SHA-512 for P-521); Ed25519
    and ML-DSA (pure ML-DSA, RFC 9881 §3: no pre-hash) hash internally, so cryptography
    wants ``None``.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp384r1":
            return hashes.SHA384()
        if key.curve.name == "secp521r1":
            return hashes.SHA512()
        return hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    return None


def public_key_pem(pub: PublicKey) -> str:
    """PEM SubjectPublicKeyInfo of *pub*."""
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_from_pem(pem: str) -> PublicKey:
    """The allowed public key in the PEM SubjectPublicKeyInfo *pem* (as :func:`public_key_pem`
    writes it).

    Raises:
        WeakKey: the key is not on the allow-list.
        ValueError: *pem* is not a PEM public key.
    """
    return allowed_public_key(serialization.load_pem_public_key(pem.encode("ascii")))


def private_key_der_pkcs8(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER of *key*, for handing a workload its key over a secure channel.

    Never log or persist the result.
    """
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_kek(kek: bytes) -> None:
    if not isinstance(kek, bytes) or len(kek) < MIN_KEK_BYTES:
        raise CaError(f"key-encryption key must be at least {MIN_KEK_BYTES} bytes")


def encrypt_private_key(key: PrivateKey, kek: bytes) -> bytes:
    """Encrypt *key* for storage as PKCS#8 PEM under *kek*.

    Uses cryptography's ``BestAvailableEncryption`` (currently PBES2 with AES-256-CBC), so
    the stored form upgrades when the library does.

    Raises:
        CaError: *kek* is shorter than 16 bytes.
    """
    _check_kek(kek)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(kek),
    )


def decrypt_private_key(pem: bytes, kek: bytes) -> PrivateKey:
    """Decrypt a PEM private key written by :func:`encrypt_private_key`.

    Raises:
        KeyDecryptionError: wrong KEK, corrupt or unencrypted PEM, or a key type that is not
            allowed.  The message never contains key material.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=kek)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # `from None`: the underlying error can quote parts of the PEM it choked on.
        raise KeyDecryptionError(
            "private key could not be decrypted: wrong key-encryption key or corrupt data"
        ) from None
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | rsa.RSAPrivateKey
        | mldsa.MLDSA44PrivateKey
        | mldsa.MLDSA65PrivateKey
        | mldsa.MLDSA87PrivateKey,
    ):
        raise KeyDecryptionError(
            f"decrypted key is of unsupported type {describe_key(key)}",
            key_type=describe_key(key),
        )
    return key


def load_or_create_kek_file(path: Path) -> bytes:
    """Load the development key-encryption key from *path*, creating it if missing.

    A new file holds 32 random bytes as URL-safe base64 text and is created with mode 0600
    atomically (``O_CREAT | O_EXCL``), so it is never briefly world-readable.  Returns the
    decoded key bytes.

    Raises:
        CaError: the file is readable or writable by group or others, or does not hold a
            base64 key of at least 32 bytes.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise CaError(
            f"key-encryption key file {path} has mode {mode:04o}; it must not be accessible "
            f"to group or others: run `chmod 600 {path}`",
            path=str(path),
            mode=f"{mode:04o}",
        )
    text = path.read_bytes().strip()
    try:
        kek = base64.b64decode(text, altchars=b"-_", validate=True)
    except ValueError:
        raise CaError(
            f"key-encryption key file {path} is not URL-safe base64", path=str(path)
        ) from None
    if len(kek) < 32:
        raise CaError(
            f"key-encryption key file {path} holds {len(kek)} bytes; need at least 32",
            path=str(path),
        )
    return kek
