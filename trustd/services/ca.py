"""The CA as the service sees it: key creation, encrypted key storage, the bundle.

Several keys of each kind coexist during a rotation (see `pki.rotation`): the bundle holds
every root, JWT key (and, with `wit_svid` on, WIT-SVID key) that is prepared, active, old
or tainted; only the active ones sign new credentials, and every intermediate that may
still have live certificates signs its own CRL and OCSP answers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import Session

from pki.bundle import TrustBundle
from pki.ca import (
    Authority,
    certificate_pem,
    create_cross_certificate,
    create_intermediate,
    create_root,
    fingerprint_sha256,
    load_pem_certificates,
    load_upstream_authority,
)
from pki.clock import Clock
from pki.errors import CaError
from pki.keys import (
    CLASSICAL_CHAIN,
    KeyType,
    PrivateKey,
    PublicKey,
    allowed_public_key,
    ca_chain,
    describe_key,
    key_chain,
    key_id,
    load_or_create_kek_file,
    public_key_from_pem,
    public_key_pem,
)
from pki.keys.backends import BackendName, FileBackend, KeyBackend, StoredKey
from pki.rotation import IN_BUNDLE, SlotStatus
from pki.rotation import KeyKind as CaKeyKind
from trustd import metrics
from trustd.domain.ca_keys import CaKeyInfo
from trustd.errors import InvalidRequest, NotReady
from trustd.services.audit import AuditLog
from trustd.settings import Settings
from trustd.store.ca_keys import (
    CaKey,
    count_ca_keys,
    create_ca_key,
    fetch_active_ca_key,
    fetch_bundle_sequence,
    list_ca_key_rows,
    list_ca_keys,
    update_bundle_sequence,
)
from trustd.store.db import lock_for_initialisation, ping, transaction

SYSTEM_ACTOR = "system:trustd"


@dataclass(frozen=True)
class JwtSigner:
    kid: str
    key: PrivateKey


@dataclass(frozen=True)
class ChainState:
    """One CA chain's signing side: its active intermediate and what follows a leaf."""

    # The active intermediate: it signs new X509-SVIDs for keys of this chain.
    authority: Authority
    authority_kid: str
    # Sent after the active intermediate while a root rotation overlaps: the new root
    # certified by the old one, for verifiers that have not fetched the new bundle yet.
    cross_certificates: tuple[x509.Certificate, ...] = ()

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What goes after a leaf the active intermediate signs (X509-SVID §5.3)."""
        return (*self.authority.issuing_chain, *self.cross_certificates)


@dataclass(frozen=True)
class CaState:
    """What one process holds in memory: the signing keys and the bundle built from the rows."""

    # The active intermediate of the chain trustd's own TLS uses (`Settings.tls_key_type`):
    # it signs the serving certificate, node SVIDs, ACME certificates, and X509-SVIDs for
    # classical keys.
    authority: Authority
    authority_kid: str
    jwt_signer: JwtSigner
    bundle: TrustBundle
    # Every key that is prepared, active, old or tainted.
    keys: tuple[CaKeyInfo, ...]
    # Every CA that may still have unexpired certificates out there, by kid: each signs its
    # own CRL and OCSP answers (roots sign the CRL of the intermediates they issued).
    issuers: Mapping[str, Authority]
    cross_certificates: tuple[x509.Certificate, ...] = ()
    # The active WIT-SVID key; None unless `wit_svid` is on.
    wit_signer: JwtSigner | None = None
    # Every configured chain's signing side, by chain name (`pki.keys.ca_chain`), the TLS
    # chain included.
    chains: Mapping[str, ChainState] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What goes after a leaf the TLS chain's intermediate signs (X509-SVID §5.3)."""
        return (*self.authority.issuing_chain, *self.cross_certificates)

    def chain_for(self, key: PublicKey) -> ChainState:
        """The chain that signs a certificate for *key*: an ML-DSA key's own level's,
        any classical key the classical one's.

        Raises:
            InvalidRequest: this trust domain keeps no CA chain for the key's type.
        """
        name = key_chain(key)
        chain = self.chains.get(name)
        if chain is None:
            raise InvalidRequest(
                f"this trust domain has no {name} CA chain to sign a {describe_key(key)} key: "
                f"add {name} to TRUSTD_ADDITIONAL_CA_KEY_TYPES and restart trustd",
                key_type=describe_key(key),
            )
        return chain


def key_encryption_key(settings: Settings, engine: Engine) -> bytes:
    """The key that encrypts CA private keys at rest: the configured passphrase, or in dev a
    generated 0600 key file in the data directory. A new file is created only while the
    database holds no CA key: one made beside existing keys could never open them, and
    would stay behind as the wrong key.

    Raises:
        CaError: the key file is missing while CA keys exist, or is unusable.
        StoreUnavailable: the database is down.
    """
    if settings.key_passphrase is not None:
        return settings.key_passphrase.get_secret_value().encode()
    path = settings.kek_path
    if not path.exists():
        with transaction(engine) as session:
            held = count_ca_keys(session)
        if held:
            raise CaError(
                f"the key-encryption key {path} is missing but the database holds {held} CA "
                "keys encrypted with it: restore the file from a backup (or set "
                "key_passphrase if the keys were encrypted with one)",
                path=str(path),
            )
    return load_or_create_kek_file(path)


def open_token(settings: Settings) -> KeyBackend | None:
    """The PKCS#11 token the settings name, logged in; None when none is configured.

    Opened at start-up so that a missing module, a missing token or a wrong PIN stops
    trustd with a clear error instead of failing the first issuance.

    Raises:
        CaError: the module, the token or the PIN is unusable, or the PIN file unreadable.
    """
    if settings.pkcs11_module is None:
        return None
    # Imported here: the binding loads only where a token is configured.
    from pki.keys.token import Pkcs11Backend

    if settings.pkcs11_pin is not None:
        pin = settings.pkcs11_pin.get_secret_value()
    else:
        assert settings.pkcs11_pin_file is not None
        pin = _read(settings.pkcs11_pin_file, "PKCS#11 PIN file").decode().strip()
    assert settings.pkcs11_token_label is not None
    return Pkcs11Backend(settings.pkcs11_module, settings.pkcs11_token_label, pin)


def crl_url(settings: Settings, issuer_kid: str) -> str:
    """Where the CRL of the CA key *issuer_kid* is published (`GET /v1/crl/{issuer_kid}`):
    the one place certificates' CRL distribution points (RFC 5280 §4.2.1.13) are built."""
    return f"{settings.base_url}/v1/crl/{issuer_kid}"


def ocsp_url(settings: Settings) -> str:
    """The OCSP responder (RFC 6960 Appendix A: GET and POST): the one place certificates'
    Authority Information Access OCSP URI (RFC 5280 §4.2.2.1) is built."""
    return f"{settings.base_url}/v1/ocsp"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None


def _row(
    kind: CaKeyKind,
    public: PublicKey,
    key_type: str,
    now: datetime,
    status: SlotStatus,
    *,
    not_before: datetime,
    not_after: datetime,
    stored: StoredKey | None,
    certificate: x509.Certificate | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    upstream: bool = False,
    issuer_kid: str | None = None,
    cross_certificate: x509.Certificate | None = None,
    chain_name: str = CLASSICAL_CHAIN,
) -> CaKeyInfo:
    kid = fingerprint_sha256(certificate) if certificate is not None else key_id(public)
    return CaKeyInfo(
        kid=kid,
        kind=kind,
        status=status,
        key_type=key_type,
        encrypted_key=stored.encrypted_key if stored is not None else None,
        key_backend=stored.backend if stored is not None else BackendName.FILE,
        key_label=stored.label if stored is not None else None,
        key_id=stored.key_id if stored is not None else None,
        public_key_pem=public_key_pem(public),
        certificate_pem=certificate_pem(certificate) if certificate is not None else None,
        chain_pem="".join(certificate_pem(c) for c in chain),
        upstream=upstream,
        not_before=not_before,
        not_after=not_after,
        created_at=now,
        issuer_kid=issuer_kid,
        cross_certificate_pem=(
            certificate_pem(cross_certificate) if cross_certificate is not None else None
        ),
        status_changed_at=now,
        chain=chain_name,
    )


def stored_key(row: CaKeyInfo) -> StoredKey | None:
    """Where *row*'s private key is kept; None when trustd does not hold it (upstream)."""
    if row.key_backend == BackendName.PKCS11:
        return StoredKey(BackendName.PKCS11, label=row.key_label, key_id=row.key_id)
    if row.encrypted_key is None:
        return None
    return StoredKey(BackendName.FILE, encrypted_key=row.encrypted_key)


def _certificate(pem: str | None) -> x509.Certificate:
    assert pem is not None, "CA rows of X.509 kinds always carry their certificate"
    return load_pem_certificates(pem.encode())[0]


class CertificateAuthority:
    """Owns the CA rows: creates keys (at first start and for rotation) and loads them into
    a `CaState`."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        kek: bytes,
        token: KeyBackend | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._file = FileBackend(kek)
        self._token = token
        if settings.ca_key_backend == "pkcs11" and token is None:
            raise CaError("ca_key_backend=pkcs11 but no PKCS#11 token is open")
        self._state: CaState | None = None
        # Decrypted keys by kid: a kid names one immutable key, so reloads reuse them.
        self._keys: dict[str, PrivateKey] = {}

    @property
    def state(self) -> CaState:
        """The keys and bundle loaded in this process.

        Raises:
            NotReady: the CA has not been loaded yet.
        """
        if self._state is None:
            raise NotReady("the CA is not loaded yet")
        return self._state

    def check_ready(self) -> None:
        """Check that this process can issue: the database answers and the CA is loaded.

        Raises:
            StoreUnavailable: the database does not answer. NotReady: the CA is not loaded.
        """
        ping(self._engine)
        _ = self.state

    @property
    def kinds(self) -> tuple[CaKeyKind, ...]:
        """The kinds of key this deployment keeps, roots first: root, intermediate, JWT key
        and, with `wit_svid` on, the WIT-SVID key."""
        kinds = (CaKeyKind.X509_ROOT, CaKeyKind.X509_INTERMEDIATE, CaKeyKind.JWT)
        return (*kinds, CaKeyKind.WIT) if self._settings.wit_svid else kinds

    @property
    def kept(self) -> tuple[tuple[CaKeyKind, str], ...]:
        """(kind, chain) of every key this deployment keeps, roots first: each chain's root
        and intermediate (`ca_key_types`), then on the classical chain the JWT key and, with
        `wit_svid` on, the WIT-SVID key (JWS has no ML-DSA algorithm)."""
        x509_keys = tuple(
            (kind, chain)
            for chain in self._settings.ca_key_types
            for kind in (CaKeyKind.X509_ROOT, CaKeyKind.X509_INTERMEDIATE)
        )
        tokens = tuple(k for k in self.kinds if k in (CaKeyKind.JWT, CaKeyKind.WIT))
        return (*x509_keys, *((kind, CLASSICAL_CHAIN) for kind in tokens))

    def initialise(self, earlier_deployment: Collection[Path] = ()) -> bool:
        """Create the root, intermediate and JWT signing key (and the WIT-SVID key, with
        `wit_svid` on) unless active ones exist.

        Returns whether anything was created. Safe to run on several replicas at once.
        *earlier_deployment* names files an earlier CA left (its bundle, its key file):
        with them, a database without any CA key is a lost database, not a new
        installation, and no new root is made over it.

        Raises:
            CaError: upstream files are unreadable or inconsistent, or the database lost
                the CA that *earlier_deployment* shows.
            StoreUnavailable: the database is down.
        """
        with transaction(self._engine) as session:
            lock_for_initialisation(session)
            if earlier_deployment and not count_ca_keys(session):
                shown = ", ".join(p.name for p in earlier_deployment)
                raise CaError(
                    f"the database holds no CA but {self._settings.data_dir} holds an earlier "
                    f"one's {shown}: restore the database (or fix database_url), or run "
                    "`trustd init --force-new-ca` to start a new CA that every agent must be "
                    "re-pinned to"
                )
            existing = {(row.kind, row.chain) for row in list_ca_keys(session, {SlotStatus.ACTIVE})}
            created: list[CaKey] = []
            for kind, chain in self.kept:
                if (kind, chain) not in existing:
                    created.append(self.create_key(session, kind, SlotStatus.ACTIVE, chain))
            for row in created:
                self._audit.record(
                    session,
                    SYSTEM_ACTOR,
                    "ca:authority:created",
                    target=row.kid,
                    details={
                        "kind": row.kind,
                        "chain": row.chain,
                        "not_after": row.not_after.isoformat(),
                    },
                )
            if created:
                self.bump_sequence(session)
            return bool(created)

    def create_key(
        self,
        session: Session,
        kind: CaKeyKind,
        status: SlotStatus,
        chain: str = CLASSICAL_CHAIN,
    ) -> CaKey:
        """Create a key of *kind* in the CA chain *chain* with *status* and add its row to
        *session*. JWT keys belong to the classical chain.

        A root is self-signed and, when an active root of its chain exists, cross-signed by
        it; an intermediate is signed by its chain's active root (or the upstream CA).

        Raises:
            CaError: a root rotation was asked of an upstream root, there is no active root
                to sign an intermediate, the chain is not configured, or the upstream files
                are unusable.
        """
        if kind is CaKeyKind.X509_ROOT:
            key = self._new_root(session, status, chain)
        elif kind is CaKeyKind.X509_INTERMEDIATE:
            key = self._new_intermediate(session, status, chain)
        else:
            key = self._new_token_key(kind, status)
        return create_ca_key(session, key)

    def _upstream(self) -> Authority | None:
        s = self._settings
        if s.upstream_ca_cert is None or s.upstream_ca_key is None:
            return None
        password = s.upstream_ca_key_password
        return load_upstream_authority(
            _read(s.upstream_ca_cert, "upstream CA certificate"),
            _read(s.upstream_ca_key, "upstream CA key"),
            password.get_secret_value().encode() if password else None,
            _read(s.upstream_ca_bundle, "upstream CA bundle") if s.upstream_ca_bundle else None,
        )

    def _chain_key_type(self, chain: str) -> KeyType:
        key_type = self._settings.ca_key_types.get(chain)
        if key_type is None:
            raise CaError(
                f"no {chain} CA chain is configured: set TRUSTD_KEY_TYPE or "
                "TRUSTD_ADDITIONAL_CA_KEY_TYPES to make its keys",
                chain=chain,
            )
        return key_type

    def _new_root(self, session: Session, status: SlotStatus, chain: str) -> CaKeyInfo:
        s = self._settings
        now = self._clock.now()
        key_type = self._chain_key_type(chain)
        current = fetch_active_ca_key(session, CaKeyKind.X509_ROOT, chain=chain)
        # An upstream CA signs the classical chain only (settings refuse it otherwise).
        upstream = self._upstream() if current is None and chain == CLASSICAL_CHAIN else None
        if upstream is not None:
            root = upstream.root
            return _row(
                CaKeyKind.X509_ROOT,
                allowed_public_key(root.public_key()),
                describe_key(root.public_key()),
                now,
                status,
                not_before=root.not_valid_before_utc,
                not_after=root.not_valid_after_utc,
                stored=None,
                certificate=root,
                upstream=True,
            )
        if current is not None and current.upstream:
            raise CaError(
                "the root is an upstream CA: rotate it upstream, then restart trustd with "
                "the new upstream files"
            )
        key, stored = self._generate(key_type, CaKeyKind.X509_ROOT)
        root = create_root(s.trust_domain_obj, key, self._clock, s.root_ttl)
        cross = None
        if current is not None and current.not_after > now:
            # Root rotation by cross-signing: the old root certifies the new one.
            cross = create_cross_certificate(root, key, self._root_authority(current), self._clock)
        return _row(
            CaKeyKind.X509_ROOT,
            allowed_public_key(root.public_key()),
            key_type,
            now,
            status,
            not_before=root.not_valid_before_utc,
            not_after=root.not_valid_after_utc,
            stored=stored,
            certificate=root,
            cross_certificate=cross,
            chain_name=chain,
        )

    def _root_authority(self, row: CaKeyInfo) -> Authority:
        root = _certificate(row.certificate_pem)
        return Authority(certificate=root, private_key=self._key(row), chain=(), root=root)

    def _new_intermediate(self, session: Session, status: SlotStatus, chain: str) -> CaKeyInfo:
        s = self._settings
        key_type = self._chain_key_type(chain)
        root_row = fetch_active_ca_key(session, CaKeyKind.X509_ROOT, chain=chain)
        if root_row is None:
            raise CaError(
                f"there is no active {chain} root to sign an intermediate; activate one first"
            )
        if root_row.upstream:
            issuer = self._upstream()
            if issuer is None:
                raise CaError("the root is an upstream CA but no upstream key is configured")
        else:
            issuer = self._root_authority(root_row)
        key, stored = self._generate(key_type, CaKeyKind.X509_INTERMEDIATE)
        intermediate = create_intermediate(
            s.trust_domain_obj, key, issuer, self._clock, s.intermediate_ttl
        )
        return _row(
            CaKeyKind.X509_INTERMEDIATE,
            allowed_public_key(intermediate.public_key()),
            key_type,
            self._clock.now(),
            status,
            not_before=intermediate.not_valid_before_utc,
            not_after=intermediate.not_valid_after_utc,
            stored=stored,
            certificate=intermediate,
            chain=issuer.issuing_chain,
            issuer_kid=root_row.kid,
            chain_name=chain,
        )

    def _new_token_key(self, kind: CaKeyKind, status: SlotStatus) -> CaKeyInfo:
        # JWT-SVID and WIT-SVID keys: same type and life, but never the same key. The kid is
        # the key's own hash (`key_id`), so a fresh key cannot take a kid of the other kind
        # (WIT-SVID §6.1); `ca_keys.kid` is unique besides.
        s = self._settings
        if kind is CaKeyKind.WIT and not s.wit_svid:
            raise CaError("WIT-SVIDs are off: set TRUSTD_WIT_SVID=true to keep a WIT-SVID key")
        key, stored = self._generate(s.jwt_key_type, kind)
        now = self._clock.now()
        return _row(
            kind,
            key.public_key(),
            s.jwt_key_type,
            now,
            status,
            not_before=now,
            not_after=now + s.jwt_key_ttl,
            stored=stored,
        )

    def bump_sequence(self, session: Session) -> int:
        """Increase `spiffe_sequence` and return it.

        Trust Domain and Bundle §4.1.1: the sequence changes with every bundle change. It
        also moves when only the signing intermediate changes, which is how every replica
        learns that it must reload (a larger sequence than needed is harmless).
        """
        return update_bundle_sequence(session, self._clock.now())

    @staticmethod
    def rows(session: Session, statuses: set[SlotStatus] | frozenset[SlotStatus]) -> list[CaKey]:
        """CA rows whose status is one of *statuses*, oldest first, for the rotation
        manager that changes them in *session*."""
        return list_ca_key_rows(session, statuses)

    @property
    def backend(self) -> KeyBackend:
        """Where new CA keys are made (`ca_key_backend`)."""
        if self._settings.ca_key_backend == "pkcs11":
            assert self._token is not None
            return self._token
        return self._file

    def _generate(self, key_type: KeyType, kind: CaKeyKind) -> tuple[PrivateKey, StoredKey]:
        # The label is for people reading the token (pkcs11-tool); the CKA_ID finds it.
        label = f"trustd {kind} {self._clock.now():%Y%m%dT%H%M%SZ}"
        return self.backend.generate(key_type, label)

    def _backend_of(self, row: CaKeyInfo) -> KeyBackend:
        if row.key_backend == BackendName.PKCS11:
            if self._token is None:
                raise CaError(
                    f"the key of {row.kind} {row.kid} lives in a PKCS#11 token, but none is "
                    "configured: set TRUSTD_PKCS11_MODULE, TRUSTD_PKCS11_TOKEN_LABEL and "
                    "TRUSTD_PKCS11_PIN (or _PIN_FILE)"
                )
            return self._token
        return self._file

    def location(self, row: CaKeyInfo) -> tuple[str, str]:
        """The backend name and a description of where *row*'s private key lives."""
        stored = stored_key(row)
        if stored is None:
            return "upstream", "the upstream CA's key file (not held by trustd)"
        return stored.backend, self._backend_of(row).location(stored)

    def _key(self, row: CaKeyInfo) -> PrivateKey:
        key = self._keys.get(row.kid)
        if key is None:
            stored = stored_key(row)
            if stored is None:
                raise CaError(f"the key of {row.kind} {row.kid} is not held by trustd")
            key = self._backend_of(row).load(stored, public_key_from_pem(row.public_key_pem))
            self._keys[row.kid] = key
        return key

    def reload_if_changed(self) -> bool:
        """Reload when the stored bundle sequence differs from the loaded one.

        Raises:
            NotReady, KeyDecryptionError: as `load`.
        """
        with transaction(self._engine) as session:
            stored = fetch_bundle_sequence(session)
        if stored is not None and self._state is not None and stored == self._state.bundle.sequence:
            return False
        self.load()
        return True

    def load(self) -> CaState:
        """Read the CA rows in the bundle and decrypt the signing keys into memory.

        Raises:
            NotReady: the CA was never initialised (run `trustd serve` or `trustd init`).
            KeyDecryptionError: the key-encryption key does not open the stored keys.
        """
        with transaction(self._engine) as session:
            rows = list_ca_keys(session, IN_BUNDLE)
            sequence = fetch_bundle_sequence(session)
        active = {
            (CaKeyKind(row.kind), row.chain): row for row in rows if row.status == SlotStatus.ACTIVE
        }
        missing = set(self.kept) - set(active)
        if missing or sequence is None:
            raise NotReady("the CA is not initialised; run `trustd init` or `trustd serve`")
        now = self._clock.now()
        roots = {
            row.kid: row for row in rows if row.kind == CaKeyKind.X509_ROOT and row.certificate_pem
        }
        issuers: dict[str, Authority] = {
            kid: self._root_authority(row)
            for kid, row in roots.items()
            if stored_key(row) is not None
        }
        for row in rows:
            if row.kind != CaKeyKind.X509_INTERMEDIATE or row.status == SlotStatus.PREPARED:
                continue
            root_row = roots.get(row.issuer_kid or "") or active[(CaKeyKind.X509_ROOT, row.chain)]
            issuers[row.kid] = Authority(
                certificate=_certificate(row.certificate_pem),
                private_key=self._key(row),
                chain=tuple(load_pem_certificates(row.chain_pem.encode())) if row.chain_pem else (),
                root=_certificate(root_row.certificate_pem),
            )
        chains: dict[str, ChainState] = {}
        for chain in self._settings.ca_key_types:
            int_row = active[(CaKeyKind.X509_INTERMEDIATE, chain)]
            signing_root = roots.get(int_row.issuer_kid or "")
            cross: tuple[x509.Certificate, ...] = ()
            if signing_root is not None and signing_root.cross_certificate_pem:
                certificate = _certificate(signing_root.cross_certificate_pem)
                if certificate.not_valid_after_utc > now:
                    cross = (certificate,)
            chains[chain] = ChainState(issuers[int_row.kid], int_row.kid, cross)
        jwt_row = active[(CaKeyKind.JWT, CLASSICAL_CHAIN)]
        bundle = TrustBundle(
            trust_domain=self._settings.trust_domain_obj,
            x509_authorities=tuple(_certificate(r.certificate_pem) for r in roots.values()),
            jwt_authorities={
                row.kid: self._key(row).public_key() for row in rows if row.kind == CaKeyKind.JWT
            },
            # WIT-SVID §6.1: the WIT-SVID keys, published only while the feature is on (a
            # validator finding none knows the trust domain issues no WIT-SVIDs, §6.2).
            wit_authorities={
                row.kid: self._key(row).public_key()
                for row in rows
                if row.kind == CaKeyKind.WIT and self._settings.wit_svid
            },
            sequence=sequence,
            refresh_hint=int(self._settings.bundle_refresh_hint.total_seconds()),
        )
        for row in rows:
            metrics.CA_EXPIRY.labels(row.kind, row.kid).set(row.not_after.timestamp())
        tls = chains[ca_chain(self._settings.tls_key_type)]
        self._state = CaState(
            authority=tls.authority,
            authority_kid=tls.authority_kid,
            jwt_signer=JwtSigner(jwt_row.kid, self._key(jwt_row)),
            bundle=bundle,
            keys=tuple(rows),
            issuers=MappingProxyType(issuers),
            cross_certificates=tls.cross_certificates,
            chains=MappingProxyType(chains),
            wit_signer=(
                JwtSigner(wit_row.kid, self._key(wit_row))
                if (wit_row := active.get((CaKeyKind.WIT, CLASSICAL_CHAIN))) is not None
                and self._settings.wit_svid
                else None
            ),
        )
        return self._state
