"""Finalization (RFC 8555 §7.4: a ready order's CSR becomes a certificate) and certificate
download (§7.4.2)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

from pki.acme.errors import AcmeNotFound, BadCsr, OrderNotReady
from pki.acme.identifiers import csr_identifiers
from pki.acme.jws import b64decode
from pki.acme.messages import Finalize, OrderStatus, parse_payload
from pki.acme.profile import Profile, TlsServerParams, issue_tls_server_certificate
from pki.acme.states import allowed, check_transition
from pki.ca import certificate_pem, load_pem_certificates, serial_hex
from pki.csr import csr_public_key, parse_csr
from pki.errors import InvalidCsr, WeakKey
from pki.keys import same_public_key
from pki.x509_path import issued_by
from trustd import tracing
from trustd.domain.acme import ACME_CERTIFICATE_KIND, CertificateChain, OrderView
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.context import AcmeContext, actor
from trustd.services.acme.housekeeping import expire_if_due
from trustd.services.acme.orders import load_order
from trustd.services.ca import CertificateAuthority, crl_url, ocsp_url
from trustd.services.issuance import Issuer
from trustd.store import acme as store
from trustd.store.ca_keys import fetch_ca_key
from trustd.store.db import transaction


def _not_ready(status: OrderStatus) -> OrderNotReady:
    return OrderNotReady(f"the order is {status}; finalize needs a ready order")


class Certificates:
    def __init__(
        self,
        context: AcmeContext,
        ca: CertificateAuthority,
        issuer: Issuer,
        profiles: Mapping[str, Profile],
    ) -> None:
        self._context = context
        self._ca = ca
        self._issuer = issuer
        self._profiles = profiles

    @tracing.traced("trustd.acme.finalize")
    def finalize(self, auth: Authenticated, order_id: str) -> OrderView:
        """Issue the certificate of a ready order from its CSR (RFC 8555 §7.4). The
        certificate is committed with the order before this returns.

        Raises:
            AcmeNotFound: no such order. OrderNotReady: the order is not ready.
            BadCsr: the CSR is invalid, names other identifiers than the order, or uses the
                account key or a key the profile does not issue for.
        """
        account = auth.require_account()
        request = parse_payload(Finalize, auth.payload)
        context = self._context
        with transaction(context.engine) as session:
            order = load_order(session, account, order_id)
            order = expire_if_due(session, order, context.clock.now())
        # §7.4: only a ready order may be finalized (ready -> processing, §7.1.6).
        if not allowed(order.status, OrderStatus.PROCESSING):
            raise _not_ready(order.status)
        csr_der = b64decode(request.csr, "csr")
        try:
            csr = parse_csr(csr_der)
        except (InvalidCsr, WeakKey) as exc:
            raise BadCsr(exc.detail) from None
        ordered = set(order.identifiers)
        requested = csr_identifiers(csr)
        # §7.4: the CSR names exactly the identifiers of the order, no more, no fewer.
        if requested != ordered:
            extra = sorted(i.value for i in requested - ordered)
            missing = sorted(i.value for i in ordered - requested)
            raise BadCsr(
                "the CSR's names differ from the order's identifiers"
                + (f"; not in the order: {', '.join(extra)}" if extra else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        public_key = csr_public_key(csr)
        # §11.1: the certificate key must not be the account key.
        if same_public_key(public_key, auth.key.key):
            raise BadCsr("the CSR uses the account key; use a separate certificate key")
        settings = context.settings
        state = self._ca.state
        params = TlsServerParams(
            public_key=public_key,
            identifiers=tuple(sorted(ordered)),
            profile=self._profiles[order.profile],
            crl_url=crl_url(settings, state.authority_kid),
            ocsp_url=ocsp_url(settings) if settings.acme_ocsp else None,
            not_before=order.not_before,
            not_after=order.not_after,
        )
        started = time.perf_counter()
        certificate = issue_tls_server_certificate(state.authority, params, context.clock)
        serial = serial_hex(certificate)
        now = context.clock.now()
        with transaction(context.engine) as session:
            current = store.fetch_order(session, order.id, for_update=True)
            assert current is not None
            if not allowed(current.status, OrderStatus.PROCESSING):
                raise _not_ready(current.status)
            # Issuance is synchronous: the order passes through `processing` inside this
            # transaction and is stored `valid` with its certificate (§7.1.6, §7.4).
            processing = check_transition(order.id, current.status, OrderStatus.PROCESSING)
            issued = replace(
                current,
                status=check_transition(order.id, processing, OrderStatus.VALID),
                certificate_serial=serial,
                updated_at=now,
            )
            # Recorded before it is returned (durable, like every issued certificate), by the
            # issuance pipeline's one record path.
            self._issuer.record_certificate(
                session,
                certificate=certificate,
                kind=ACME_CERTIFICATE_KIND,
                issuer_kid=state.authority_kid,
                actor=actor(account.id),
                started=started,
                audit_action="acme:certificate:issued",
                audit_target=serial,
                audit_details={
                    "order": issued.id,
                    "identifiers": [i.value for i in sorted(ordered)],
                    "profile": issued.profile,
                    "not_after": certificate.not_valid_after_utc.isoformat(),
                    "replaces": issued.replaces,
                },
            )
            store.update_order(session, issued)
            # Returned once the transaction commits on leaving the block.
            return OrderView(issued, store.list_authorization_ids(session, issued.id))

    def chain(self, auth: Authenticated, serial: str, alternate: int) -> CertificateChain:
        """The PEM chain (RFC 8555 §7.4.2): leaf and intermediates; alternate 1 adds the root
        for clients that want the whole path.

        Raises:
            AcmeNotFound: no such certificate for this account, or no such alternate.
        """
        account = auth.require_account()
        if alternate not in (0, 1):
            raise AcmeNotFound("no such certificate chain")
        with transaction(self._context.engine) as session:
            issued = store.fetch_acme_certificate(session, serial)
            if issued is None or issued.account_id != account.id:
                raise AcmeNotFound("no such certificate")
            issuer = fetch_ca_key(session, issued.issuer_kid)
            # RFC 8555 §7.4.2: the issuer's certificate and the chain above it, no root.
            issuer_chain = (issuer.certificate_pem or "") + issuer.chain_pem if issuer else ""
        intermediates = load_pem_certificates(issuer_chain.encode())
        chain = [issued.certificate_pem, *(certificate_pem(c) for c in intermediates)]
        if alternate == 1:
            top = intermediates[-1]
            roots = [r for r in self._ca.state.bundle.x509_authorities if issued_by(top, r)]
            chain += [certificate_pem(r) for r in roots[:1]]
        return CertificateChain("".join(chain), alternates=1)
