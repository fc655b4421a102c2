"""TPM 2.0 structures a verifier needs, computed without a TPM: public areas and their
names, credential activation's MakeCredential, and quotes.

References are to the TPM 2.0 Library specification (revision 1.59): Part 1 (architecture),
Part 2 (structures), Part 3 (commands). Every structure is big-endian and parsed strictly:
a trailing byte, an unknown algorithm or an impossible size is refused, never skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from pki.errors import InvalidTpmData, WeakKey
from pki.keys import PublicKey, check_public_key

# Part 2 §6.8: TPM_GENERATED_VALUE opens every structure the TPM signs itself, so that a
# restricted signing key never signs data that merely looks like an attestation.
TPM_GENERATED_VALUE = 0xFF544347
# Part 2 §6.9: TPM_ST_ATTEST_QUOTE.
ST_ATTEST_QUOTE = 0x8018
MAX_PCR = 24


class Alg(IntEnum):
    """Part 2 §6.3 TPM_ALG_ID: the algorithms these structures may name."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    MGF1 = 0x0007
    KEYEDHASH = 0x0008
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CFB = 0x0043


class ObjectAttributes(IntFlag):
    """Part 2 §8.3 TPMA_OBJECT."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN = 1 << 18


_HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}
_CURVES: dict[int, Callable[[], ec.EllipticCurve]] = {
    0x0003: ec.SECP256R1,  # TPM_ECC_NIST_P256
    0x0004: ec.SECP384R1,  # TPM_ECC_NIST_P384
    0x0005: ec.SECP521R1,  # TPM_ECC_NIST_P521
}
# Part 2 §11.2.5.5, §11.2.3.2: which schemes carry a hashAlg in their details (RSAES and
# NULL carry nothing; ECDAA also carries a count and cannot sign quotes we can check).
_RSA_SCHEMES_WITH_HASH = {Alg.RSASSA, Alg.RSAPSS, Alg.OAEP}
_ECC_SCHEMES_WITH_HASH = {Alg.ECDSA, Alg.ECDH}
_KDF_SCHEMES = {Alg.MGF1, Alg.KDF1_SP800_56A, Alg.KDF2, Alg.KDF1_SP800_108}


def hash_algorithm(alg: int) -> hashes.HashAlgorithm:
    """The hash a TPM_ALG_ID names; SHA-1 is refused (Part 1 §11.4.11 lets a verifier
    choose, and a collision on a quote's PCR digest is all it takes to lie).

    Raises:
        InvalidTpmData: not SHA-256, SHA-384 or SHA-512.
    """
    factory = _HASHES.get(alg)
    if factory is None:
        raise InvalidTpmData(f"hash algorithm 0x{alg:04x} is not allowed (SHA-256/384/512 are)")
    return factory()


def _digest(alg: int, *parts: bytes) -> bytes:
    h = hashes.Hash(hash_algorithm(alg))
    for part in parts:
        h.update(part)
    return h.finalize()


def _hash_name(alg: int) -> str:
    return hash_algorithm(alg).name


class _Reader:
    """Big-endian reads over one structure that must be consumed exactly."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._at = 0
        self._what = what

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise InvalidTpmData(f"{self._what} is truncated")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def sized(self, limit: int = 1024) -> bytes:
        """A TPM2B_*: a 16-bit size and that many bytes."""
        size = self.u16()
        if size > limit:
            raise InvalidTpmData(f"{self._what} has a field of {size} bytes (at most {limit})")
        return self.take(size)

    def end(self) -> None:
        if self._at != len(self._data):
            raise InvalidTpmData(f"{self._what} has {len(self._data) - self._at} trailing bytes")


def _sized(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC (Part 2 §12.2.4) of an RSA or ECC key, and its bytes."""

    raw: bytes
    type: int
    name_alg: int
    attributes: ObjectAttributes
    auth_policy: bytes
    # TPMT_SYM_DEF_OBJECT: (algorithm, key bits, mode), or None for TPM_ALG_NULL.
    symmetric: tuple[int, int, int] | None
    # The key's scheme and its hash (Alg.NULL, 0 when the key has none).
    scheme: int
    scheme_hash: int
    public_key: PublicKey

    @classmethod
    def parse(cls, raw: bytes) -> TpmPublic:
        """Parse a TPMT_PUBLIC (not size-prefixed).

        Raises:
            InvalidTpmData: malformed, not RSA or ECC, or a key type trustd does not allow.
        """
        r = _Reader(raw, "TPMT_PUBLIC")
        kind, name_alg, attributes = r.u16(), r.u16(), r.u32()
        hash_algorithm(name_alg)
        auth_policy = r.sized(64)
        symmetric: tuple[int, int, int] | None = None
        sym_alg = r.u16()
        if sym_alg != Alg.NULL:
            symmetric = (sym_alg, r.u16(), r.u16())
        scheme = r.u16()
        scheme_hash = 0
        key: object
        if kind == Alg.RSA:
            if scheme in _RSA_SCHEMES_WITH_HASH:
                scheme_hash = r.u16()
            elif scheme not in (Alg.NULL, Alg.RSAES):
                raise InvalidTpmData(f"RSA scheme 0x{scheme:04x} is not supported")
            bits, exponent = r.u16(), r.u32()
            modulus = r.sized(1024)
            if len(modulus) * 8 != bits:
                raise InvalidTpmData("RSA modulus size does not match keyBits")
            # Part 2 §12.2.3.5: an exponent of zero means the default, 2^16 + 1.
            try:
                key = rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(modulus)).public_key()
            except ValueError:
                raise InvalidTpmData("RSA modulus and exponent are not a public key") from None
        elif kind == Alg.ECC:
            if scheme in _ECC_SCHEMES_WITH_HASH:
                scheme_hash = r.u16()
            elif scheme != Alg.NULL:
                raise InvalidTpmData(f"ECC scheme 0x{scheme:04x} is not supported")
            curve_id = r.u16()
            kdf = r.u16()
            if kdf in _KDF_SCHEMES:
                r.u16()
            elif kdf != Alg.NULL:
                raise InvalidTpmData(f"ECC KDF 0x{kdf:04x} is not supported")
            curve = _CURVES.get(curve_id)
            if curve is None:
                raise InvalidTpmData(f"ECC curve 0x{curve_id:04x} is not supported")
            x, y = r.sized(66), r.sized(66)
            try:
                key = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x), int.from_bytes(y), curve()
                ).public_key()
            except ValueError:
                raise InvalidTpmData("ECC point is not on its curve") from None
        else:
            raise InvalidTpmData(f"key type 0x{kind:04x} is neither RSA nor ECC")
        r.end()
        try:
            check_public_key(key)
        except WeakKey as exc:
            raise InvalidTpmData(exc.detail) from None
        return cls(
            raw=raw,
            type=kind,
            name_alg=name_alg,
            attributes=ObjectAttributes(attributes),
            auth_policy=auth_policy,
            symmetric=symmetric,
            scheme=scheme,
            scheme_hash=scheme_hash,
            public_key=key,
        )

    @property
    def name(self) -> bytes:
        """Part 1 §16: an object's Name is its nameAlg followed by the nameAlg digest of its
        public area; the TPM refers to loaded objects by it."""
        return struct.pack(">H", self.name_alg) + _digest(self.name_alg, self.raw)

    def spki_der(self) -> bytes:
        """The public key as a DER SubjectPublicKeyInfo (what a certificate holds)."""
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def require(self, present: ObjectAttributes, absent: ObjectAttributes, what: str) -> None:
        """Raises:
        InvalidTpmData: an attribute of `present` is clear or one of `absent` is set.
        """
        missing = present & ~self.attributes
        extra = absent & self.attributes
        if missing or extra:
            raise InvalidTpmData(
                f"{what} has the wrong object attributes "
                f"(missing {missing!r}, unexpected {extra!r})"
            )


# Part 1 §24 and the TCG EK Credential Profile §2.1.5: an EK is a restricted decryption key
# bound to its TPM; an attestation key is a restricted signing key made inside the TPM.
EK_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT
)
AK_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN
)


def check_endorsement_key(ek: TpmPublic) -> None:
    """Raises:
    InvalidTpmData: `ek` is not a restricted decryption key fixed to its TPM with AES-CFB
        as its symmetric algorithm (what MakeCredential encrypts with).
    """
    ek.require(EK_ATTRIBUTES, ObjectAttributes.SIGN, "the endorsement key")
    if ek.symmetric is None or ek.symmetric[0] != Alg.AES or ek.symmetric[2] != Alg.CFB:
        raise InvalidTpmData("the endorsement key's symmetric algorithm is not AES-CFB")


def check_attestation_key(ak: TpmPublic) -> None:
    """Raises:
    InvalidTpmData: `ak` is not a restricted signing key generated in and fixed to its TPM.
    """
    ak.require(AK_ATTRIBUTES, ObjectAttributes.DECRYPT, "the attestation key")


def kdfa(
    alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """Part 1 §11.4.10.2 KDFa: SP 800-108 counter-mode KDF with HMAC; `label` is written
    with its terminating zero octet, as the TPM does."""
    name = _hash_name(alg)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        message = struct.pack(">I", counter) + label + b"\0" + context_u + context_v
        out += hmac.new(key, message + struct.pack(">I", bits), name).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def kdfe(alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """Part 1 §11.4.10.3 KDFe: SP 800-56A's concatenation KDF over the ECDH secret `z`;
    `label` is written with its terminating zero octet."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += _digest(alg, struct.pack(">I", counter), z, label, b"\0", party_u, party_v)
        counter += 1
    return out[: (bits + 7) // 8]


def _seed(ek: TpmPublic, random: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """A seed for the EK and its encryption to it (Part 1 Annex B.10.3 for RSA, C.6.4 for
    ECC), both labelled "IDENTITY" and hashed with the EK's nameAlg."""
    digest_size = hash_algorithm(ek.name_alg).digest_size
    key = ek.public_key
    if isinstance(key, rsa.RSAPublicKey):
        seed = random(digest_size)
        oaep_hash = hash_algorithm(ek.name_alg)
        encrypted = key.encrypt(
            seed, padding.OAEP(padding.MGF1(oaep_hash), oaep_hash, b"IDENTITY\0")
        )
        return seed, encrypted
    if isinstance(key, ec.EllipticCurvePublicKey):
        # One-pass Diffie-Hellman: an ephemeral key on the EK's curve; its public point is
        # the "encrypted" seed, the KDFe of the shared x-coordinate the seed itself.
        ephemeral = ec.generate_private_key(key.curve)
        size = (key.curve.key_size + 7) // 8
        point = ephemeral.public_key().public_numbers()
        ex, ey = point.x.to_bytes(size), point.y.to_bytes(size)
        z = ephemeral.exchange(ec.ECDH(), key)
        party_v = key.public_numbers().x.to_bytes(size)
        seed = kdfe(ek.name_alg, z, b"IDENTITY", ex, party_v, digest_size * 8)
        return seed, _sized(ex) + _sized(ey)
    raise InvalidTpmData("the endorsement key is neither RSA nor ECC")


@dataclass(frozen=True)
class Credential:
    """TPM2_MakeCredential's output: the TPM2B_ID_OBJECT's and TPM2B_ENCRYPTED_SECRET's
    contents, which only the EK's TPM can open, and only for the named object."""

    blob: bytes
    secret: bytes


def make_credential(
    ek: TpmPublic,
    credential: bytes,
    object_name: bytes,
    random: Callable[[int], bytes] = os.urandom,
) -> Credential:
    """Part 1 §24.4: protect `credential` so that TPM2_ActivateCredential releases it only in
    the TPM holding `ek`, and only when the object named `object_name` is loaded in it.

    Raises:
        InvalidTpmData: `ek` cannot protect credentials (see `check_endorsement_key`).
    """
    check_endorsement_key(ek)
    assert ek.symmetric is not None
    digest_size = hash_algorithm(ek.name_alg).digest_size
    if not 0 < len(credential) <= digest_size:
        raise InvalidTpmData(f"a credential is 1 to {digest_size} bytes")
    seed, encrypted_seed = _seed(ek, random)
    # Part 1 §24.4: the symmetric key binds the credential to the object's Name ...
    sym_key = kdfa(ek.name_alg, seed, b"STORAGE", object_name, b"", ek.symmetric[1])
    # ... and CFB with a zero IV is the storage encryption of Part 1 §22.3.
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(_sized(credential)) + encryptor.finalize()
    # Part 1 §24.5: the outer HMAC covers the encrypted credential and the Name.
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer = hmac.new(hmac_key, enc_identity + object_name, _hash_name(ek.name_alg)).digest()
    return Credential(blob=_sized(outer) + enc_identity, secret=encrypted_seed)


@dataclass(frozen=True)
class Quote:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2 §10.12.12, §10.12.1)."""

    # qualifiedSigner is the key's Qualified Name (Part 1 §16), which depends on its
    # hierarchy; the signature by the key is what proves who signed.
    signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    # TPML_PCR_SELECTION: (bank hash, PCR indices ascending), in the quote's order.
    selection: tuple[tuple[int, tuple[int, ...]], ...]
    pcr_digest: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Quote:
        """Raises:
        InvalidTpmData: malformed, not TPM-generated, or not a quote.
        """
        r = _Reader(raw, "TPMS_ATTEST")
        if r.u32() != TPM_GENERATED_VALUE:
            raise InvalidTpmData("attestation is not TPM-generated (magic)")
        if r.u16() != ST_ATTEST_QUOTE:
            raise InvalidTpmData("attestation is not a quote")
        signer, extra = r.sized(66), r.sized(64)
        clock, resets, restarts = r.u64(), r.u32(), r.u32()
        r.u8()  # safe: whether the clock ever went backwards; not a freshness signal here
        firmware = r.u64()
        banks = r.u32()
        if banks > 16:
            raise InvalidTpmData("quote selects too many PCR banks")
        selection = []
        for _ in range(banks):
            bank = r.u16()
            mask = r.take(r.u8())
            indices = tuple(i for i in range(len(mask) * 8) if mask[i // 8] >> (i % 8) & 1)
            if any(i >= MAX_PCR for i in indices):
                raise InvalidTpmData("quote selects a PCR beyond 23")
            selection.append((bank, indices))
        digest = r.sized(64)
        r.end()
        return cls(signer, extra, clock, resets, restarts, firmware, tuple(selection), digest)


def pcr_digest(alg: int, values: Sequence[bytes]) -> bytes:
    """Part 3 §18.4 TPM2_Quote: the digest, with the signing scheme's hash, of the selected
    PCR values concatenated in selection order."""
    return _digest(alg, *values)


def verify_quote(
    ak: TpmPublic, attest: bytes, signature: bytes, pcrs: Mapping[int, Mapping[int, bytes]]
) -> Quote:
    """Check that `ak` signed `attest`, a quote over exactly the PCR values `pcrs` (bank hash
    → PCR index → value). The caller checks `extra_data` against its nonce.

    Raises:
        InvalidTpmData: malformed, not signed by `ak`, not a quote by `ak`, or the PCR
            values are not the ones quoted.
    """
    sig_hash = verify_signature(ak, attest, signature)
    quote = Quote.parse(attest)
    quoted: list[bytes] = []
    seen: set[tuple[int, int]] = set()
    for bank, indices in quote.selection:
        for index in indices:
            value = pcrs.get(bank, {}).get(index)
            if value is None:
                raise InvalidTpmData(f"no value given for quoted PCR {index} of bank 0x{bank:04x}")
            seen.add((bank, index))
            quoted.append(value)
    given = {(bank, index) for bank, values in pcrs.items() for index in values}
    if given != seen:
        raise InvalidTpmData("PCR values were given that the quote does not cover")
    if not hmac.compare_digest(pcr_digest(sig_hash, quoted), quote.pcr_digest):
        raise InvalidTpmData("the PCR values do not match the quoted digest")
    return quote


def verify_signature(key: TpmPublic, message: bytes, signature: bytes) -> int:
    """Check a TPMT_SIGNATURE (Part 2 §11.3.4) by `key` over `message`; returns the hash
    algorithm it used. When the key has a scheme, the signature must use it.

    Raises:
        InvalidTpmData: malformed, another scheme, or the signature does not verify.
    """
    r = _Reader(signature, "TPMT_SIGNATURE")
    sig_alg, sig_hash = r.u16(), r.u16()
    if key.scheme != Alg.NULL and (sig_alg, sig_hash) != (key.scheme, key.scheme_hash):
        raise InvalidTpmData("the signature does not use the key's scheme")
    chosen = hash_algorithm(sig_hash)
    public = key.public_key
    try:
        if sig_alg == Alg.ECDSA and isinstance(public, ec.EllipticCurvePublicKey):
            r_value, s_value = int.from_bytes(r.sized(66)), int.from_bytes(r.sized(66))
            r.end()
            public.verify(encode_dss_signature(r_value, s_value), message, ec.ECDSA(chosen))
        elif sig_alg in (Alg.RSASSA, Alg.RSAPSS) and isinstance(public, rsa.RSAPublicKey):
            raw = r.sized(1024)
            r.end()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if sig_alg == Alg.RSASSA
                else padding.PSS(padding.MGF1(chosen), padding.PSS.AUTO)
            )
            public.verify(raw, message, pad, chosen)
        else:
            raise InvalidTpmData(f"signature scheme 0x{sig_alg:04x} does not fit the key")
    except InvalidSignature:
        raise InvalidTpmData("the signature does not verify") from None
    return sig_hash


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256, the form `tpm:ek_pubhash` and `tpm:pcr` selectors take."""
    return hashlib.sha256(data).hexdigest()
