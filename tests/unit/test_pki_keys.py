"""Key generation, the key allow-list, key ids and at-rest key encryption."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519

from pki.errors import CaError, KeyDecryptionError, WeakKey
from pki.keys import (
    KeyType,
    check_public_key,
    decrypt_private_key,
    encrypt_private_key,
    generate_private_key,
    jws_algorithm,
    key_id,
    load_or_create_kek_file,
    private_key_der_pkcs8,
    public_key_pem,
    same_public_key,
)
from tests.unit.pki_helpers import cached_ec_key, cached_key, cached_rsa_key

KEK = b"k" * 32


def test_key_type_values_are_the_wire_names() -> None:
    assert [k.value for k in KeyType] == [
        "ec-p256",
        "ec-p384",
        "ed25519",
        "rsa-2048",
        "ml-dsa-44",
        "ml-dsa-65",
        "ml-dsa-87",
    ]
    assert [k for k in KeyType if k.post_quantum] == [
        KeyType.ML_DSA_44,
        KeyType.ML_DSA_65,
        KeyType.ML_DSA_87,
    ]
    assert KeyType("ec-p256") is KeyType.EC_P256
    with pytest.raises(ValueError, match="ec-p192"):
        KeyType("ec-p192")


@pytest.mark.parametrize(
    ("key_type", "kind", "detail"),
    [
        (KeyType.EC_P256, ec.EllipticCurvePrivateKey, "secp256r1"),
        (KeyType.EC_P384, ec.EllipticCurvePrivateKey, "secp384r1"),
        (KeyType.ED25519, ed25519.Ed25519PrivateKey, None),
        (KeyType.RSA_2048, rsa.RSAPrivateKey, 2048),
    ],
)
def test_generate_private_key(key_type: KeyType, kind: type, detail: object) -> None:
    key = cached_key(key_type)
    assert isinstance(key, kind)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == detail
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size == detail
        assert key.public_key().public_numbers().e == 65537
    check_public_key(key.public_key())


def test_generated_keys_are_fresh() -> None:
    a = generate_private_key(KeyType.EC_P256)
    b = generate_private_key(KeyType.EC_P256)
    assert not same_public_key(a.public_key(), b.public_key())


# --------------------------------------------------------------------------- allow-list


@pytest.mark.parametrize(
    "make",
    [
        lambda: cached_ec_key("secp256r1"),
        lambda: cached_ec_key("secp384r1"),
        lambda: cached_ec_key("secp521r1"),
        lambda: cached_rsa_key(2048),
        lambda: cached_rsa_key(3072),
        lambda: cached_key(KeyType.ED25519),
    ],
    ids=["p256", "p384", "p521", "rsa2048", "rsa3072", "ed25519"],
)
def test_allowed_keys(make: object) -> None:
    check_public_key(make().public_key())  # type: ignore[operator]


def _huge_rsa_public_key() -> rsa.RSAPublicKey:
    # Building an 8200-bit key pair would take seconds; the allow-list only looks at the
    # public numbers, so an odd modulus of the right size is enough.
    n = (1 << 8199) | 0xFFFF_FFFF_FFFF_FFFF
    return rsa.RSAPublicNumbers(65537, n).public_key()


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: cached_rsa_key(1024).public_key(), "RSA-1024"),
        (lambda: cached_rsa_key(2048, exponent=3).public_key(), "public exponent"),
        (_huge_rsa_public_key, "longer than 8192"),
        (lambda: cached_ec_key("secp192r1").public_key(), "EC secp192r1"),
        (lambda: cached_ec_key("secp256k1").public_key(), "EC secp256k1"),
        (lambda: dsa.generate_private_key(2048).public_key(), "DSA-2048"),
        (lambda: x25519.X25519PrivateKey.generate().public_key(), "X25519"),
        (lambda: ed448.Ed448PrivateKey.generate().public_key(), "Ed448"),
        (lambda: "not a key", "str"),
    ],
    ids=["rsa1024", "rsa-e3", "rsa8200", "p192", "secp256k1", "dsa", "x25519", "ed448", "str"],
)
def test_weak_or_foreign_keys_are_refused(make: object, named: str) -> None:
    with pytest.raises(WeakKey) as info:
        check_public_key(make())  # type: ignore[operator]
    # The error says which key and what is allowed, and never carries key material.
    assert named in info.value.detail
    assert "allowed: EC P-256/P-384/P-521" in info.value.detail
    assert info.value.title == "Key type not allowed"


# --------------------------------------------------------------------------- key ids, JWS


def test_key_id_is_truncated_sha256_of_spki() -> None:
    pub = cached_key(KeyType.EC_P256).public_key()
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")
    kid = key_id(pub)
    assert kid == expected[:32]
    assert len(kid) == 32
    assert "=" not in kid
    assert key_id(pub) == kid  # stable


def test_key_ids_differ_between_keys() -> None:
    kids = {key_id(cached_key(kt).public_key()) for kt in KeyType}
    assert len(kids) == len(KeyType)


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        (lambda: cached_ec_key("secp256r1"), "ES256"),
        (lambda: cached_ec_key("secp384r1"), "ES384"),
        (lambda: cached_ec_key("secp521r1"), "ES512"),
        (lambda: cached_rsa_key(2048), "RS256"),
        (lambda: cached_key(KeyType.ED25519), "EdDSA"),
    ],
)
def test_jws_algorithm(make: object, alg: str) -> None:
    key = make()  # type: ignore[operator]
    assert jws_algorithm(key) == alg
    assert jws_algorithm(key.public_key()) == alg


def test_jws_algorithm_refuses_other_curves() -> None:
    with pytest.raises(WeakKey, match="secp256k1"):
        jws_algorithm(cached_ec_key("secp256k1"))


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("key_type", list(KeyType))
def test_public_key_pem_and_pkcs8_der_round_trip(key_type: KeyType) -> None:
    key = cached_key(key_type)
    pem = public_key_pem(key.public_key())
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert same_public_key(serialization.load_pem_public_key(pem.encode()), key.public_key())
    der = private_key_der_pkcs8(key)
    loaded = serialization.load_der_private_key(der, password=None)
    assert same_public_key(loaded.public_key(), key.public_key())


@pytest.mark.parametrize("key_type", list(KeyType))
def test_encrypt_decrypt_round_trip(key_type: KeyType) -> None:
    key = cached_key(key_type)
    pem = encrypt_private_key(key, KEK)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert private_key_der_pkcs8(key) not in pem
    restored = decrypt_private_key(pem, KEK)
    assert same_public_key(restored.public_key(), key.public_key())


def test_decrypt_with_wrong_kek_fails_without_leaking() -> None:
    pem = encrypt_private_key(cached_key(KeyType.EC_P256), KEK)
    with pytest.raises(KeyDecryptionError) as info:
        decrypt_private_key(pem, b"w" * 32)
    assert "wrong key-encryption key" in info.value.detail
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert "BEGIN" not in str(info.value)


@pytest.mark.parametrize(
    "pem",
    [
        b"garbage",
        b"",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    ],
)
def test_decrypt_corrupt_input(pem: bytes) -> None:
    with pytest.raises(KeyDecryptionError):
        decrypt_private_key(pem, KEK)


def test_decrypt_refuses_unencrypted_key() -> None:
    plain = cached_key(KeyType.EC_P256).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyDecryptionError) as info:
        decrypt_private_key(plain, KEK)
    assert "PRIVATE KEY" not in info.value.detail


def test_decrypt_refuses_unsupported_key_type() -> None:
    pem = dsa.generate_private_key(2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEK),
    )
    with pytest.raises(KeyDecryptionError, match="DSA-2048"):
        decrypt_private_key(pem, KEK)


def test_short_kek_is_refused() -> None:
    with pytest.raises(CaError, match="at least 16 bytes"):
        encrypt_private_key(cached_key(KeyType.EC_P256), b"short")


# --------------------------------------------------------------------------- KEK file


def test_kek_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        kek = load_or_create_kek_file(path)
    finally:
        os.umask(old_umask)
    assert len(kek) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.urlsafe_b64decode(path.read_bytes().strip()) == kek
    assert load_or_create_kek_file(path) == kek


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_kek_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek"
    load_or_create_kek_file(path)
    path.chmod(mode)
    with pytest.raises(CaError, match="chmod 600") as info:
        load_or_create_kek_file(path)
    assert info.value.fields["mode"] == f"{mode:04o}"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not base64 !!!\n", "not URL-safe base64"),
        (base64.urlsafe_b64encode(b"x" * 16) + b"\n", "need at least 32"),
    ],
)
def test_kek_file_with_bad_content_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "kek"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    with pytest.raises(CaError, match=reason):
        load_or_create_kek_file(path)


def test_kek_from_file_encrypts_keys(tmp_path: Path) -> None:
    kek = load_or_create_kek_file(tmp_path / "kek")
    key = cached_key(KeyType.ED25519)
    restored = decrypt_private_key(encrypt_private_key(key, kek), kek)
    assert same_public_key(restored.public_key(), key.public_key())
