"""Finalization (RFC 8555 §7.4: a ready order's CSR becomes a certificate) and certificate
download (§7.4.2)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

from cryptography import x509

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
from trustd.services.acme.housekeeping import expire_if_due, expiry_due
from trustd.services.acme.orders import own_order
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
        self._issuer_chains: dict[str, list[x509.Certificate]] = {}

    @tracing.traced("trustd.acme.finalize")
    def finalize(self, auth: Authenticated, order_id: str) -> OrderView:
        """Issue the certificate of a ready order from its CSR (RFC 8555 §7.4). The
        certificate is committed with the order before this returns.

        Raises:
            AcmeNotFound: no such order. OrderNotReady: the order is not ready.
            BadCsr: the CSR is invalid, names other identifiers than the order, or uses the
                account key or a key the profile does not issue for.
        """
        view = own_order(auth, order_id)
        account = auth.require_account()
        request = parse_payload(Finalize, auth.payload)
        context = self._context
        order = view.order
        if expiry_due(order, context.clock.now()):
            with transaction(context.engine) as session:
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
            # Issuance is synchronous: the order passes through `processing` inside this
            # transaction and is stored `valid` with its certificate (§7.1.6, §7.4).
            processing = check_transition(order.id, order.status, OrderStatus.PROCESSING)
            issued = replace(
                order,
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
            # Compare-and-set on the status finalize read: of two finalizations of one order
            # one issues; the other's certificate is rolled back with its transaction.
            if not store.update_order(session, issued, expected=order.status):
                current = store.fetch_order(session, order.id)
                raise _not_ready(current.status if current is not None else order.status)
            # Returned once the transaction commits on leaving the block.
            return replace(view, order=issued)

    def chain(self, auth: Authenticated, serial: str, alternate: int) -> CertificateChain:
        """The PEM chain (RFC 8555 §7.4.2): leaf and intermediates; alternate 1 adds the root
        for clients that want the whole path.

        Raises:
            AcmeNotFound: no such certificate for this account, or no such alternate.
        """
        if alternate not in (0, 1):
            raise AcmeNotFound("no such certificate chain")
        issued = auth.require_objects().certificate
        if issued is None or issued.serial != serial:
            raise AcmeNotFound("no such certificate")
        intermediates = self._issuer_chain(issued.issuer_kid)
        chain = [issued.certificate_pem, *(certificate_pem(c) for c in intermediates)]
        if alternate == 1:
            top = intermediates[-1]
            roots = [r for r in self._ca.state.bundle.x509_authorities if issued_by(top, r)]
            chain += [certificate_pem(r) for r in roots[:1]]
        return CertificateChain("".join(chain), alternates=1)

    def _issuer_chain(self, kid: str) -> list[x509.Certificate]:
        """RFC 8555 §7.4.2: the certificate of the CA key *kid* and the chain above it, no
        root. A CA key's certificate and chain are written once, with the key (only its
        status changes later), so they are read once per process."""
        cached = self._issuer_chains.get(kid)
        if cached is not None:
            return cached
        with transaction(self._context.engine) as session:
            issuer = fetch_ca_key(session, kid)
        if issuer is None or issuer.certificate_pem is None:
            return []
        chain = load_pem_certificates((issuer.certificate_pem + issuer.chain_pem).encode())
        self._issuer_chains[kid] = chain
        return chain
