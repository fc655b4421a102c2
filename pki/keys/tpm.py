"""Node keys in a TPM 2.0 (through tpm2-pytss, the `tpm` extra).

A key is made by TPM2_Create under the TPM's storage root key (a primary ECC P-256 storage
key of the owner hierarchy, regenerated from the TPM's own seed each time: TPM 2.0 Part 1
§27.3), so what is kept on disk is the key's public area and its private area encrypted
by that TPM (Part 1 §23.3, "protected storage"). Another TPM cannot load it: a copied
file is of no use elsewhere. Each signature opens the TPM, loads the key, signs the digest
(TPM2_Sign) and flushes everything: without a resource manager (swtpm) nothing may stay
loaded, and the TPM is free for other users between signatures.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from pki.errors import InvalidTpmData, KeyUnavailable
from pki.keys.held import HeldEcKey
from pki.tpm import TpmPublic


def tcti_for(device: str) -> str:
    """The TCTI string for a TPM given as a device path (/dev/tpmrm0) or a TCTI string
    (swtpm:host=127.0.0.1,port=2321), which is taken as is."""
    return f"device:{device}" if device.startswith("/") else device


def _unavailable(what: str, exc: Exception) -> KeyUnavailable:
    return KeyUnavailable(f"TPM {what} failed: {exc}")


class _Connection:
    """One TPM connection with the storage root key loaded; flushes all it loaded."""

    def __init__(self, device: str) -> None:
        try:
            from tpm2_pytss import ESAPI
            from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
            from tpm2_pytss.types import TPM2B_PUBLIC
        except ImportError:
            raise KeyUnavailable("a TPM key needs tpm2-pytss: pip install 'trustd[tpm]'") from None
        self._loaded: list[Any] = []
        try:
            self.ctx = ESAPI(tcti_for(device))
        except Exception as exc:
            raise _unavailable(f"{device!r} open", exc) from None
        try:
            # TCG TPM v2.0 Provisioning Guidance §7.5.1: the ECC P-256 SRK template, with
            # AES-128-CFB protecting its children.
            template = TPM2B_PUBLIC.parse(
                "ecc256:aes128cfb",
                objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
                | TPMA_OBJECT.NODA,
            )
            self.srk, _, _, _, _ = self.ctx.create_primary(None, template, ESYS_TR.OWNER)
            self._loaded.append(self.srk)
        except Exception as exc:
            self.close()
            raise _unavailable("storage root key", exc) from None

    def load(self, blob: bytes) -> Any:
        from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC

        public, used = TPM2B_PUBLIC.unmarshal(blob)
        private, _ = TPM2B_PRIVATE.unmarshal(blob[used:])
        handle = self.ctx.load(self.srk, private, public)
        self._loaded.append(handle)
        return handle

    def close(self) -> None:
        for handle in reversed(self._loaded):
            # Closing anyway: a handle the TPM already dropped is no reason to stop.
            with contextlib.suppress(Exception):
                self.ctx.flush_context(handle)
        self._loaded.clear()
        self.ctx.close()


class TpmKey(HeldEcKey):
    """An ECC P-256 signing key in the TPM at `device`; `blob` is what is kept on disk."""

    def __init__(self, device: str, blob: bytes, public: ec.EllipticCurvePublicKey) -> None:
        super().__init__(public)
        self._device = device
        self.blob = blob

    @property
    def device(self) -> str:
        return f"the TPM {self._device!r}"

    @classmethod
    def generate(cls, device: str) -> TpmKey:
        """A new non-restricted ECDSA P-256 signing key made inside the TPM.

        Raises:
            KeyUnavailable: the TPM cannot be reached or refused.
        """
        from tpm2_pytss.constants import TPMA_OBJECT
        from tpm2_pytss.types import TPM2B_PUBLIC

        connection = _Connection(device)
        try:
            # fixedTPM and fixedParent: the key cannot be duplicated to another TPM
            # (Part 1 §23.3.3); sensitiveDataOrigin: the TPM made the private key itself.
            template = TPM2B_PUBLIC.parse(
                "ecc256:ecdsa-sha256",
                objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                | TPMA_OBJECT.FIXEDTPM
                | TPMA_OBJECT.FIXEDPARENT
                | TPMA_OBJECT.SENSITIVEDATAORIGIN
                | TPMA_OBJECT.USERWITHAUTH,
            )
            private, public, _, _, _ = connection.ctx.create(connection.srk, None, template)
        except Exception as exc:
            raise _unavailable("key creation", exc) from None
        finally:
            connection.close()
        return cls.from_blob(device, bytes(public.marshal()) + bytes(private.marshal()))

    @classmethod
    def from_blob(cls, device: str, blob: bytes) -> TpmKey:
        """The key kept as `blob`, checked to load in the TPM at `device`.

        Raises:
            KeyUnavailable: the TPM cannot be reached, or refuses the key (it was made by
                another TPM, or the blob is damaged).
        """
        try:
            (size,) = struct.unpack(">H", blob[:2])
            public = TpmPublic.parse(blob[2 : 2 + size]).public_key
        except (struct.error, InvalidTpmData) as exc:
            raise KeyUnavailable(f"the TPM key file is damaged: {exc}") from None
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise KeyUnavailable("the TPM key file holds no EC key")
        connection = _Connection(device)
        try:
            connection.load(blob)
        except Exception as exc:
            raise KeyUnavailable(
                f"the TPM {device!r} does not load this key (made by another TPM?): {exc}"
            ) from None
        finally:
            connection.close()
        return cls(device, blob, public)

    def sign_digest(self, digest: bytes) -> bytes:
        from tpm2_pytss.constants import TPM2_ALG, TPM2_RH, TPM2_ST
        from tpm2_pytss.types import TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK

        connection = _Connection(self._device)
        try:
            handle = connection.load(self.blob)
            # The key's own scheme (ECDSA-SHA256); a NULL ticket: the digest was not made
            # by the TPM, which a non-restricted key does not require (Part 3 §20.2).
            signature = connection.ctx.sign(
                handle,
                digest,
                TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL),
            )
        except Exception as exc:
            raise _unavailable("signature", exc) from None
        finally:
            connection.close()
        size = (self.curve.key_size + 7) // 8
        r = bytes(signature.signature.ecdsa.signatureR)
        s = bytes(signature.signature.ecdsa.signatureS)
        return r.rjust(size, b"\0") + s.rjust(size, b"\0")

    def __repr__(self) -> str:
        return f"TpmKey(device={self._device!r}, curve={self.curve.name})"
