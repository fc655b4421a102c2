"""Challenges (RFC 8555 §7.5.1, §8): the client's response starts a validation, whose outcome
moves the challenge, its authorization and its order on (§7.1.6)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

import structlog

from pki.acme import errors as acme_errors
from pki.acme.challenges import Validator, key_authorization
from pki.acme.errors import AcmeError, AcmeNotFound, Malformed
from pki.acme.messages import AuthorizationStatus, ChallengeStatus, OrderStatus
from pki.acme.states import allowed, check_transition
from trustd.domain.acme import Authorization, Challenge, ChallengeView
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.authorizations import POLL_INTERVAL
from trustd.services.acme.context import AcmeContext
from trustd.services.acme.housekeeping import expire_for_authorization, expiry_due
from trustd.store import acme as store
from trustd.store.db import transaction

log = structlog.get_logger("trustd.acme")

# Validations run beside requests; each waits at most acme_validation_timeout.
_VALIDATION_THREADS = 16


def challenge_retry_after(challenge: Challenge) -> int | None:
    """RFC 8555 §7.5.1: a polling interval while the validation is in progress."""
    return POLL_INTERVAL if challenge.status is ChallengeStatus.PROCESSING else None


class Challenges:
    def __init__(self, context: AcmeContext, validator: Validator) -> None:
        self._context = context
        self._validator = validator
        self._validations = ThreadPoolExecutor(
            _VALIDATION_THREADS, thread_name_prefix="acme-validation"
        )

    def close(self) -> None:
        """Let validations in flight record their outcome, then stop the workers.

        Run before the engine is disposed: a validation finishing afterwards would return
        its connection to a pool nobody closes, and its challenge would stay `processing`.
        """
        self._validations.shutdown(wait=True)

    def respond(self, auth: Authenticated, challenge_id: str) -> ChallengeView:
        """POST-as-GET reads a challenge; a POST of `{}` asks the server to validate it
        (RFC 8555 §7.5.1). The validation starts once the challenge is recorded as
        `processing`; the answer waits for it up to `acme_validation_wait` and then shows the
        challenge as it stands, final or still `processing` (the validation goes on).

        Raises:
            AcmeNotFound: no such challenge for this account.
            Malformed: the authorization is no longer pending.
        """
        objects = auth.require_objects()
        if not objects.challenges or objects.challenges[0].id != challenge_id:
            raise AcmeNotFound("no such challenge")
        account = objects.account
        challenge, authz, order = objects.challenges[0], objects.authorizations[0], objects.order
        assert order is not None  # a foreign key
        respond = auth.payload is not None
        now = self._context.clock.now()
        if expiry_due(order, now):
            with transaction(self._context.engine) as session:
                authz, order = expire_for_authorization(session, authz, order, now)
        start = False
        # A response to a challenge already `processing` (§7.1.6 "client retry") is
        # answered with the validation in flight; one that is final, as it stands.
        if respond and challenge.status is ChallengeStatus.PENDING:
            # A response only counts while the authorization can still be validated.
            if not allowed(authz.status, AuthorizationStatus.VALID):
                raise Malformed(f"the authorization is {authz.status}, not pending")
            processing = replace(
                challenge,
                status=check_transition(challenge.id, challenge.status, ChallengeStatus.PROCESSING),
            )
            with transaction(self._context.engine) as session:
                # Compare-and-set on the status read with the request: of two responses to
                # one challenge, one starts the validation; the other answers as it stands.
                start = store.update_challenge(session, processing, expected=challenge.status)
                if not start:
                    current = store.fetch_challenge(session, challenge.id)
                    assert current is not None  # challenges go only with their order
                    processing = current
            challenge = processing
        # Started only after the commit above: the validation records its outcome only on a
        # challenge still `processing`.
        if start:
            validation = self._validations.submit(
                self._validate, challenge, authz, account.thumbprint
            )
            try:
                validated = validation.result(
                    self._context.settings.acme_validation_wait.total_seconds()
                )
            except FutureTimeout:
                validated = None
            if validated is not None:
                challenge = validated
        return ChallengeView(challenge, authz.id, challenge_retry_after(challenge))

    def _validate(
        self, challenge: Challenge, authz: Authorization, thumbprint: str
    ) -> Challenge | None:
        """Validate *challenge* of *authz*, just moved to `processing` by a request signed
        with the account key of *thumbprint* (§8.1: the key authorization is made with it),
        and apply the outcome to the challenge, its authorization and its order (§7.1.6).
        Returns the challenge as recorded, or None if it was no longer `processing`. Never
        raises: failures are recorded as the challenge's error."""
        key_authz = key_authorization(challenge.token, thumbprint)
        error: AcmeError | None = None
        started = time.perf_counter()
        try:
            self._validator.validate(challenge.type, authz.identifier, challenge.token, key_authz)
        except AcmeError as exc:
            error = exc
        except Exception as exc:  # a validator bug must not leave the challenge processing
            log.exception("acme_validation_crashed", challenge=challenge.id)
            error = acme_errors.ConnectionProblem(f"validation failed: {type(exc).__name__}")
        log.info(
            "acme_validation",
            challenge=challenge.id,
            type=challenge.type,
            outcome="invalid" if error else "valid",
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return self._record_validation(challenge.id, error)

    def _record_validation(self, challenge_id: str, error: AcmeError | None) -> Challenge | None:
        now = self._context.clock.now()
        ok = error is None
        with transaction(self._context.engine) as session:
            found = store.fetch_validation(session, challenge_id)
            challenge_target = ChallengeStatus.VALID if ok else ChallengeStatus.INVALID
            if found is None or not allowed(found.challenge.status, challenge_target):
                return None
            challenge, authz, order = found.challenge, found.authorization, found.order
            challenge = replace(
                challenge,
                status=check_transition(challenge.id, challenge.status, challenge_target),
                validated=now if ok else None,
                error=error.document() if error is not None else None,
            )
            store.update_challenge(session, challenge)
            authz_target = AuthorizationStatus.VALID if ok else AuthorizationStatus.INVALID
            # Deactivated or expired meanwhile: the outcome stays on the challenge alone.
            if not allowed(authz.status, authz_target):
                return challenge
            authz = replace(authz, status=check_transition(authz.id, authz.status, authz_target))
            store.update_authorization(session, authz)
            if error is not None:
                # §7.1.6: an authorization failure invalidates the order.
                if not allowed(order.status, OrderStatus.INVALID):
                    return challenge
                order = replace(
                    order,
                    status=check_transition(order.id, order.status, OrderStatus.INVALID),
                    error=error.document(),
                )
            else:
                if not allowed(order.status, OrderStatus.READY):
                    return challenge
                # §7.1.6: the order is ready once every authorization is valid. An order of
                # one identifier has one authorization (one per identifier): this one.
                others = (
                    [a for a in store.list_authorizations(session, order.id) if a.id != authz.id]
                    if len(order.identifiers) > 1
                    else []
                )
                if all(a.status is AuthorizationStatus.VALID for a in others):
                    order = replace(
                        order, status=check_transition(order.id, order.status, OrderStatus.READY)
                    )
            store.update_order(session, replace(order, updated_at=now))
        return challenge
