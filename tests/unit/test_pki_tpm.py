"""pki/tpm.py's parsers on arbitrary bytes, and its KDF against the TCG test vector's shape:
whatever arrives, the only error is InvalidTpmData (the API maps it; nothing crashes)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from pki.errors import InvalidTpmData
from pki.tpm import Alg, ObjectAttributes, Quote, TpmPublic, kdfa, verify_signature


def _ecc_public(attributes: int = 0x00050072) -> bytes:
    """A TPMT_PUBLIC of a P-256 ECDSA-SHA256 key, as a TPM marshals it."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return (
        struct.pack(">HHI", Alg.ECC, Alg.SHA256, attributes)
        + struct.pack(">H", 0)  # authPolicy
        + struct.pack(">HHHHH", Alg.NULL, Alg.ECDSA, Alg.SHA256, 0x0003, Alg.NULL)
        + struct.pack(">H", 32) + numbers.x.to_bytes(32)
        + struct.pack(">H", 32) + numbers.y.to_bytes(32)
    )  # fmt: skip


def test_a_marshalled_public_area_parses_and_names_itself() -> None:
    raw = _ecc_public()
    parsed = TpmPublic.parse(raw)
    assert (parsed.scheme, parsed.scheme_hash) == (Alg.ECDSA, Alg.SHA256)
    assert ObjectAttributes.RESTRICTED in parsed.attributes
    assert parsed.name[:2] == b"\x00\x0b" and len(parsed.name) == 34
    with pytest.raises(InvalidTpmData, match="trailing"):
        TpmPublic.parse(raw + b"\0")
    with pytest.raises(InvalidTpmData, match="truncated"):
        TpmPublic.parse(raw[:-1])


def test_sha1_is_refused_as_name_algorithm() -> None:
    raw = bytearray(_ecc_public())
    raw[2:4] = struct.pack(">H", Alg.SHA1)
    with pytest.raises(InvalidTpmData, match="not allowed"):
        TpmPublic.parse(bytes(raw))


def test_kdfa_counter_mode_lengths() -> None:
    # Part 1 §11.4.10.2: the output is the first `bits` of the HMAC blocks, and the length
    # in bits is part of every block (so a shorter output is not a prefix of a longer one).
    long = kdfa(Alg.SHA256, b"k", b"STORAGE", b"u", b"", 512)
    short = kdfa(Alg.SHA256, b"k", b"STORAGE", b"u", b"", 128)
    assert len(long) == 64 and len(short) == 16
    assert long[:16] != short


@given(st.binary(max_size=400))
def test_public_area_parser_only_refuses(data: bytes) -> None:
    with contextlib.suppress(InvalidTpmData):
        TpmPublic.parse(data)


_RSA_HEADER = struct.pack(
    ">HHIHHHHH", Alg.RSA, Alg.SHA256, 0x000300B2, 0, Alg.AES, 128, Alg.CFB, Alg.NULL
)


@given(st.integers(0, 2**2048 - 1), st.integers(0, 2**32 - 1))
def test_rsa_numbers_that_are_no_key_are_refused(modulus: int, exponent: int) -> None:
    raw = _RSA_HEADER + struct.pack(">HI", 2048, exponent) + struct.pack(">H", 256)
    with contextlib.suppress(InvalidTpmData):
        TpmPublic.parse(raw + modulus.to_bytes(256))


@given(st.data())
def test_mutated_public_areas_only_refuse(data: st.DataObject) -> None:
    raw = bytearray(_ecc_public())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(InvalidTpmData):
        TpmPublic.parse(bytes(raw))


@given(st.binary(max_size=300))
def test_quote_parser_only_refuses(data: bytes) -> None:
    with contextlib.suppress(InvalidTpmData):
        Quote.parse(b"\xffTCG\x80\x18" + data)


@given(st.binary(max_size=200))
def test_signature_parser_only_refuses(data: bytes) -> None:
    key = TpmPublic.parse(_ecc_public())
    with pytest.raises(InvalidTpmData):
        verify_signature(key, b"message", struct.pack(">HH", Alg.ECDSA, Alg.SHA256) + data)
