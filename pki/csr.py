"""PKCS#10 certificate signing requests (RFC 2986): made by agents, parsed by the CA.

Only the public key of a CSR is ever used: the signer decides the identity (X509-SVID §4).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pki.errors import (
    InvalidCsr,
    WeakKey,
)
from pki.keys import (
    PrivateKey,
    PublicKey,
    allowed_public_key,
    check_public_key,
    describe_key,
    is_ml_dsa,
    signature_hash,
)

DEFAULT_MAX_CSR_BYTES = 16384


def create_csr(key: PrivateKey) -> str:
    """A PEM CSR proving possession of *key*. Its subject is empty: the signer decides the
    identity (X509-SVID §4), so the CSR carries nothing else.
    """
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return (
        csr.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM).decode("ascii")
    )


def parse_csr(
    data: bytes, max_size: int = DEFAULT_MAX_CSR_BYTES, *, allow_ml_dsa: bool = False
) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER PKCS#10 CSR and check its proof of possession and key type.

    Only the public key is meant to be used: the CSR's subject and SANs are never trusted,
    the caller decides the SPIFFE ID.

    Raises:
        InvalidCsr: larger than *max_size* bytes, unparsable, or its self-signature is
            invalid.
        WeakKey: the CSR's key is not on the allow-list, or is ML-DSA and *allow_ml_dsa*
            is not set (the caller decides who may hold an ML-DSA SVID).
    """
    if not isinstance(data, bytes):
        raise InvalidCsr(f"CSR must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise InvalidCsr(
            f"CSR is {len(data)} bytes; the limit is {max_size} bytes",
            size=len(data),
            limit=max_size,
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise InvalidCsr("CSR is not a parsable PEM or DER PKCS#10 request") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise WeakKey("CSR public key type is not supported") from None
    check_public_key(public_key)
    if is_ml_dsa(public_key) and not allow_ml_dsa:
        raise WeakKey(
            f"{describe_key(public_key)} CSR keys are not accepted here",
            key_type=describe_key(public_key),
        )
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    # RFC 2986 §3: the signature proves possession of the private key; without it anyone
    # could get a certificate for someone else's public key.
    if not signature_ok:
        raise InvalidCsr("CSR signature is invalid (no proof of possession of the key)")
    return csr


def csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The allowed public key of a CSR returned by :func:`parse_csr`.

    Raises:
        WeakKey: the key is not on the allow-list.
    """
    return allowed_public_key(csr.public_key())
