"""The agent's side of `tpm` node attestation, through tpm2-pytss (the optional `tpm` extra):
read the EK and its certificate, make an attestation key, activate the server's credential
and quote PCRs (trustd/attestation/tpm.py is the server's side).

The TPM may be a kernel device (`/dev/tpmrm0`, the resource manager) or any TCTI string
(`swtpm:host=127.0.0.1,port=2321`). Without a resource manager every transient object and
session this code makes is flushed before it returns, or the TPM runs out of object slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from pki.bundle import TrustBundle
from pki.errors import TrustdError
from pki.keys import PrivateKey
from pki.keys.tpm import tcti_for
from trustd.agent.client import NodeIdentity, ServerClient
from trustd.agent.errors import TpmError
from trustd.attestation.base import b64url, b64url_decode

# The EKs tried, in order: (tpm2-pytss template name, NV index of the certificate (TCG EK
# Credential Profile 2.0 §2.2.1.4), persistent handle where it is usually kept (TCG TPM
# v2.0 Provisioning Guidance §7.8)). The low-range EKs' authPolicy is PolicySecret on the
# endorsement hierarchy alone; the high-range ones (PolicyOR with PolicyAuthorizeNV) are
# not used.
EKS = (
    ("EK-RSA2048", 0x01C00002, 0x81010001),
    ("EK-ECC256", 0x01C0000A, 0x81010002),
)
# TPM2_PCR_Read returns at most eight digests per call (Part 3 §22.4, TPML_DIGEST).
_PCRS_PER_READ = 8


class TpmSession:
    """One TPM connection holding the EK and a fresh attestation key until closed."""

    def __init__(self, device: str, ek: str | None = None) -> None:
        """Open the TPM at `device` with its first certified EK of `EKS` (or the one named
        `ek`) and make an AK.

        Raises:
            TpmError: tpm2-pytss is missing, the TPM cannot be opened, or it has no EK
                certificate.
        """
        try:
            from tpm2_pytss import ESAPI
            from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
            from tpm2_pytss.types import TPM2B_PUBLIC
        except ImportError:
            raise TpmError("the tpm attestor needs tpm2-pytss: pip install 'trustd[tpm]'") from None
        self._flush: list[Any] = []
        try:
            self._ctx = ESAPI(tcti_for(device))
        except Exception as exc:
            raise TpmError(f"cannot open TPM {device!r}: {exc}") from None
        try:
            self._ek = self._endorsement_key(ek)
            # The AK: a restricted ECDSA P-256 signing key generated inside the TPM, under
            # the endorsement hierarchy (TCG EK Credential Profile §2.1.5.1's AK shape).
            template = TPM2B_PUBLIC.parse(
                "ecc256:ecdsa-sha256:null",
                objectAttributes=TPMA_OBJECT.RESTRICTED
                | TPMA_OBJECT.SIGN_ENCRYPT
                | TPMA_OBJECT.FIXEDTPM
                | TPMA_OBJECT.FIXEDPARENT
                | TPMA_OBJECT.SENSITIVEDATAORIGIN
                | TPMA_OBJECT.USERWITHAUTH,
            )
            self._ak, ak_public, _, _, _ = self._ctx.create_primary(
                None, template, ESYS_TR.ENDORSEMENT
            )
            self._flush.append(self._ak)
            self._ak_public = bytes(ak_public.publicArea.marshal())
        except Exception as exc:
            self.close()
            if isinstance(exc, TpmError):
                raise
            raise TpmError(f"TPM {device!r} refused: {exc}") from None

    def _endorsement_key(self, wanted: str | None) -> Any:
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import ESYS_TR
        from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

        reader = NVReadEK(self._ctx)
        for name, cert_index, handle in EKS:
            if wanted is not None and name != wanted:
                continue
            try:
                self._ek_cert = reader(cert_index)
            except (NoSuchIndex, TSS2_Exception):
                continue
            try:
                ek = self._ctx.tr_from_tpmpublic(handle)
            except TSS2_Exception:
                # Not persisted (the usual case on real machines): the EK is a primary key,
                # so the profile's template regenerates the very key the certificate
                # certifies.
                _, template = create_ek_template(name, reader)
                ek, _, _, _, _ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
                self._flush.append(ek)
            public, _, _ = self._ctx.read_public(ek)
            self._ek_public = bytes(public.publicArea.marshal())
            return ek
        tried = ", ".join(f"0x{index:08x}" for _, index, _ in EKS)
        raise TpmError(f"the TPM has no EK certificate in NV (tried {tried})")

    def evidence(self) -> dict[str, Any]:
        """Step one's evidence: the EK certificate and the EK and AK public areas."""
        return {
            "ek_cert": b64url(self._ek_cert),
            "ek_public": b64url(self._ek_public),
            "ak_public": b64url(self._ak_public),
        }

    def answer(self, challenge: Mapping[str, Any], pcrs: Sequence[int]) -> dict[str, Any]:
        """Step two's evidence: the activated credential and, with `pcrs`, a quote of them
        (SHA-256 bank) over the challenge's nonce.

        Raises:
            TpmError: the TPM refused to activate the credential (it was not made for this
                EK and AK) or to quote.
        """
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
        from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

        token = str(challenge["challenge"])
        blob = b64url_decode(str(challenge.get("credential_blob") or ""), "credential_blob")
        secret = b64url_decode(str(challenge.get("encrypted_secret") or ""), "encrypted_secret")
        try:
            # TCG EK Credential Profile §2.1.5: the EK's authPolicy is PolicySecret on the
            # endorsement hierarchy, so ActivateCredential uses it through a policy session.
            session = self._ctx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            try:
                self._ctx.policy_secret(ESYS_TR.ENDORSEMENT, session)
                released = self._ctx.activate_credential(
                    self._ak,
                    self._ek,
                    TPM2B_ID_OBJECT(credential=blob),
                    TPM2B_ENCRYPTED_SECRET(secret=secret),
                    session1=ESYS_TR.PASSWORD,
                    session2=session,
                )
            finally:
                self._ctx.flush_context(session)
            evidence = {**self.evidence(), "challenge": token, "secret": b64url(bytes(released))}
            if pcrs:
                evidence.update(self.quote(b64url_decode(token, "challenge")[:32], pcrs))
        except TrustdError:
            raise
        except Exception as exc:
            raise TpmError(f"the TPM refused the challenge: {exc}") from None
        return evidence

    def quote(self, nonce: bytes, pcrs: Sequence[int]) -> dict[str, Any]:
        """A quote by the AK of the SHA-256 PCRs `pcrs` with `nonce` as qualifying data, and
        the values it covers."""
        selection = "sha256:" + ",".join(str(i) for i in sorted(set(pcrs)))
        attest, signature = self._ctx.quote(self._ak, selection, nonce)
        values: dict[str, str] = {}
        ordered = sorted(set(pcrs))
        for start in range(0, len(ordered), _PCRS_PER_READ):
            chunk = ordered[start : start + _PCRS_PER_READ]
            _, _, digests = self._ctx.pcr_read("sha256:" + ",".join(str(i) for i in chunk))
            values.update({str(i): bytes(d).hex() for i, d in zip(chunk, digests, strict=True)})
        return {
            "quote": b64url(bytes(attest)),
            "signature": b64url(bytes(signature.marshal())),
            "pcrs": values,
        }

    def close(self) -> None:
        for handle in reversed(self._flush):
            # Closing anyway: a handle the TPM already dropped is no reason to stop.
            with contextlib.suppress(Exception):
                self._ctx.flush_context(handle)
        self._flush.clear()
        self._ctx.close()


async def attest_with_tpm(
    client: ServerClient, device: str, pcrs: Sequence[int], key: PrivateKey
) -> tuple[NodeIdentity, TrustBundle]:
    """Attest this node with its TPM: evidence, the server's challenge, the TPM's answer.

    Raises:
        TpmError: the TPM failed. ServerError: the server refused (the detail says why).
    """
    session = await asyncio.to_thread(TpmSession, device)
    try:
        challenge = await client.challenge("tpm", session.evidence())
        evidence = await asyncio.to_thread(session.answer, challenge, pcrs)
    finally:
        await asyncio.to_thread(session.close)
    return await client.attest("tpm", evidence, key)
