"""Service settings: `TRUSTD_*` environment variables over an optional TOML file."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pki.acme.challenges import DEFAULT_DENIED_NETWORKS
from pki.errors import TrustdError
from pki.keys import KeyType, ml_dsa_tls_problem
from pki.spiffe_id import TrustDomain
from trustd.logs import AccessLog, LogFormat

# Values that are obviously examples; refusing them outside dev keeps a copied sample
# configuration from protecting production CA keys.
_PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "example", "dev"})
_MIN_PASSPHRASE_LENGTH = 16


_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


class SettingsError(TrustdError):
    title = "Invalid settings"


class K8sClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    audience: str = "trustd"
    jwks_file: Path


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRUSTD_", extra="forbid", frozen=True)

    env: Literal["dev", "production"] = "dev"
    trust_domain: str = "example.org"
    listen: str = "127.0.0.1:8443"
    data_dir: Path = Path("var")
    database_url: str | None = None
    redis_url: str | None = None
    # Redis through Sentinel: `host:port,host:port` of the sentinels and the service (master
    # name) they monitor; the master is looked up again after a failover
    # (`trustd.redis_clients`). TRUSTD_REDIS_URL, if also set, gives the db and credentials.
    redis_sentinels: str | None = None
    redis_service: str = "trustd"
    tls: bool = True
    workers: int = Field(default=1, ge=1, le=64)
    # Extra names the serving certificate carries besides localhost and the listen address.
    server_names: list[str] = Field(default_factory=list)
    # The base URL clients use to reach this service (behind a load balancer, its URL); it is
    # written into certificates (CRL distribution points, OCSP) and the ACME directory.
    public_url: str | None = None

    key_type: KeyType = KeyType.EC_P256
    jwt_key_type: KeyType = KeyType.EC_P256
    key_passphrase: SecretStr | None = None
    upstream_ca_cert: Path | None = None
    upstream_ca_key: Path | None = None
    upstream_ca_key_password: SecretStr | None = None
    upstream_ca_bundle: Path | None = None
    # Where new CA keys (root, intermediate, JWT) are made and kept: `file` seals them in
    # the database under the key-encryption key; `pkcs11` generates them in the token and
    # every signature is made there. Keys made earlier stay where they were made.
    ca_key_backend: Literal["file", "pkcs11"] = "file"
    pkcs11_module: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None

    root_ttl: timedelta = timedelta(days=365)
    intermediate_ttl: timedelta = timedelta(days=30)
    x509_svid_ttl: timedelta = timedelta(hours=1)
    x509_svid_max_ttl: timedelta = timedelta(hours=24)
    jwt_svid_ttl: timedelta = timedelta(minutes=5)
    jwt_svid_max_ttl: timedelta = timedelta(hours=1)
    # WIT-SVIDs (SPIFFE WIT-SVID draft, WIMSE Workload Credentials), experimental and off
    # by default: with it on, a separate signing key (its own kid, rotated like the JWT
    # key, of `jwt_key_type` and `jwt_key_ttl`) is published in the bundle as `wit-svid`.
    # WIMSE Workload Credentials §3.1: WITs are refreshed "on the order of hours".
    wit_svid: bool = False
    wit_svid_ttl: timedelta = timedelta(hours=1)
    wit_svid_max_ttl: timedelta = timedelta(hours=24)
    serving_cert_ttl: timedelta = timedelta(days=1)
    bundle_refresh_hint: timedelta = timedelta(minutes=5)
    # Agent batches (500 CSRs) are the largest legitimate bodies.
    max_request_bytes: int = 1024 * 1024

    # Logs: `auto` writes short human-readable lines when stderr is a terminal and JSON
    # lines otherwise. The access log's `default` leaves out the requests that repeat all
    # day and say nothing: agents' sync long-polls, health and readiness checks and metrics
    # scrapes (`trustd.api.middleware.QUIET_PATHS`); `all` logs every request.
    log_format: LogFormat = "auto"
    access_log: AccessLog = "default"

    # Admin API tokens: every token expires; one asked without a lifetime gets the default.
    admin_token_ttl: timedelta = timedelta(hours=8)
    admin_token_max_ttl: timedelta = timedelta(days=30)

    # Nodes and agents.
    node_svid_ttl: timedelta = timedelta(hours=1)
    join_token_ttl: timedelta = timedelta(hours=1)
    sync_wait: timedelta = timedelta(seconds=30)
    # Kubernetes clusters whose projected service-account tokens attest nodes (k8s_psat):
    # {"name": {"issuer": "...", "audience": "trustd", "jwks_file": "/path/jwks.json"}}.
    k8s_clusters: dict[str, K8sClusterSettings] = Field(default_factory=dict)
    # PEM roots that x509pop node certificates must chain to; x509pop is off without it.
    x509pop_ca_bundle: Path | None = None
    # PEM roots and intermediates of the TPM manufacturers whose EK certificates are
    # trusted (`tpm` attestor); tpm is off without it.
    tpm_ek_ca_bundle: Path | None = None
    # Rego module deciding which entries a node may receive (package trustd.attestation).
    attestation_policy: Path | None = None

    # Policy: which engine decides, who may call the OPA-compatible API, where the first
    # bundle comes from, bundle signatures, the decision cache and the decision log.
    policy_engine: Literal["embedded", "remote"] = "embedded"
    policy_remote_url: str | None = None
    policy_remote_token: SecretStr | None = None
    policy_remote_ca_bundle: Path | None = None
    policy_dir: Path | None = None
    policy_api_auth: Literal["none", "token", "mtls"] = "token"
    policy_api_token: SecretStr | None = None
    policy_api_identities: list[str] = Field(default_factory=list)
    # The document `POST /` answers (OPA's `default_decision`, `/system/main` by default).
    policy_default_decision: str = Field(
        default="/system/main", pattern=r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$"
    )
    policy_bundle_keys: dict[str, Path] = Field(default_factory=dict)
    policy_bundle_require_signature: bool = True
    policy_bundle_signing_key: Path | None = None
    policy_bundle_signing_keyid: str = "default"
    policy_reload_interval: timedelta = timedelta(seconds=30)
    decision_cache_size: int = Field(default=10000, ge=0)
    decision_log: bool = True
    decision_log_queue: int = Field(default=10000, ge=1)
    decision_log_retention: timedelta = timedelta(days=7)
    decision_log_max_rows: int = Field(default=1_000_000, ge=1)

    # Observed flows (`POST /v1/agents/flows`): kept this long and at most this many rows
    # (the leader prunes the rest); each node may send this many batches a minute (an agent
    # sends one every few seconds, each bounded by `trustd.domain.flows.MAX_FLOWS_PER_BATCH`).
    flow_retention: timedelta = timedelta(hours=24)
    flow_max_rows: int = Field(default=1_000_000, ge=1)
    flow_batches_per_minute: int = Field(default=120, ge=1)

    # Prometheus metrics. `metrics_listen` (HOST:PORT) serves GET /metrics alone over plain
    # HTTP on a listener of its own (an internal interface), and the main listener stops
    # serving it; `metrics_token` lets scrapers in on the main listener with
    # `Authorization: Bearer <token>`. With neither, the main listener serves /metrics only
    # when it listens on loopback.
    metrics_listen: str | None = None
    metrics_token: SecretStr | None = None
    # OpenTelemetry: spans go to this OTLP/gRPC collector (`http://host:4317`); none: off.
    otel_endpoint: str | None = None

    # Rotation and revocation (pki.rotation, pki.revocation).
    jwt_key_ttl: timedelta = timedelta(days=30)
    # How often the leader ticks the rotation state machine and refreshes CRLs.
    rotation_interval: timedelta = timedelta(seconds=10)
    # Every replica re-reads the bundle sequence this often even if a notification is lost.
    bundle_reload_interval: timedelta = timedelta(seconds=30)
    crl_validity: timedelta = timedelta(hours=24)
    ocsp_validity: timedelta = timedelta(hours=1)
    # Write the CRL distribution point into X509-SVIDs (RFC 5280 §4.2.1.13).
    svid_crl_distribution_point: bool = True

    # Federation (SPIFFE Federation §6.2): each federated bundle is fetched again at its
    # refresh hint, bounded to [min, max]; failures retry with backoff from min. A fetch
    # gives up after `federation_fetch_timeout` in all (connect, TLS, headers and body).
    federation_refresh_min: timedelta = timedelta(seconds=10)
    federation_refresh_max: timedelta = timedelta(hours=1)
    federation_fetch_timeout: timedelta = timedelta(seconds=10)
    # PEM roots for `https_web` bundle endpoints (default: the system's WebPKI roots).
    federation_web_ca_bundle: Path | None = None

    # ACME server (RFC 8555) under /acme/.
    acme_eab_required: bool = False
    acme_cert_ttl: timedelta = timedelta(days=7)
    acme_short_cert_ttl: timedelta = timedelta(hours=24)
    acme_ocsp: bool = True
    acme_order_lifetime: timedelta = timedelta(hours=1)
    acme_retention: timedelta = timedelta(days=7)
    acme_http01_port: int = Field(default=80, ge=1, le=65535)
    acme_tlsalpn01_port: int = Field(default=443, ge=1, le=65535)
    acme_dns_resolver: str | None = None
    acme_validation_timeout: timedelta = timedelta(seconds=10)
    # How long a challenge POST waits for its validation before answering `processing`: a
    # validation that finishes in time is in the answer, so the client's first poll of the
    # authorization finds it final (RFC 8555 §7.5.1); a slower one goes on after the answer.
    acme_validation_wait: timedelta = timedelta(seconds=2)
    acme_validation_allow: list[str] = Field(default_factory=list)
    acme_validation_deny: list[str] = Field(default_factory=lambda: list(DEFAULT_DENIED_NETWORKS))
    # Identifier policy data (rego/acme.rego): names under these DNS suffixes (default: the
    # trust domain) and addresses in these networks may be ordered.
    acme_dns_suffixes: list[str] = Field(default_factory=list)
    acme_ip_networks: list[str] = Field(default_factory=list)
    acme_policy_data: Path | None = None  # JSON merged over the two lists above
    acme_orders_per_hour: int = Field(default=300, ge=1)
    acme_identifier_orders_per_hour: int = Field(default=60, ge=1)

    # Admin web UI (/ui/). Sessions are short and absolute; the cookie is Secure by default
    # because trustd serves TLS (turn it off only behind a plain-HTTP test listener).
    ui_session_ttl: timedelta = timedelta(hours=8)
    ui_cookie_secure: bool = True
    # After this many consecutive wrong sign-ins an account waits 30 s, doubling per further
    # failure up to ui_lockout_max.
    ui_lockout_threshold: int = Field(default=5, ge=1)
    ui_lockout_max: timedelta = timedelta(minutes=15)
    # The who-may-talk-to-whom graph evaluates the mesh policy over pairs of at most this
    # many identities (n^2 decisions, cached per policy and entry revision).
    ui_graph_max_identities: int = Field(default=60, ge=2, le=500)

    @field_validator("acme_validation_allow", "acme_validation_deny", "acme_ip_networks")
    @classmethod
    def _acme_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("TRUSTD_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("trust_domain")
    @classmethod
    def _canonical_trust_domain(cls, value: str) -> str:
        try:
            return TrustDomain.parse(value).name
        except TrustdError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("jwt_key_type")
    @classmethod
    def _jwt_key_allowed(cls, value: KeyType) -> KeyType:
        # JWT-SVID §3: only RS*, ES* and PS* are allowed, so Ed25519 cannot sign JWT-SVIDs.
        if value is KeyType.ED25519:
            raise ValueError("JWT-SVIDs cannot be signed with Ed25519 (JWT-SVID spec §3)")
        # Nor ML-DSA, which has no registered JWS algorithm (pki.keys.jws_algorithm).
        if value.post_quantum:
            raise ValueError(f"JWT-SVIDs cannot be signed with {value}: no JWS algorithm")
        return value

    @field_validator("key_type")
    @classmethod
    def _key_type_usable(cls, value: KeyType) -> KeyType:
        # The root, intermediate, serving certificate and X509-SVIDs all take this key
        # type, so it must be one this process's own TLS clients can verify: trustd
        # never issues what they cannot use.
        problem = ml_dsa_tls_problem() if value.post_quantum else None
        if problem is not None:
            raise ValueError(f"TRUSTD_KEY_TYPE={value}: {problem}")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _seconds_as_duration(cls, value: object, info: ValidationInfo) -> object:
        # A duration may be given as ISO 8601 (`PT10S`) or as plain seconds (`10`, `0.5`):
        # pydantic takes a number, but from the environment every value is a string.
        field = cls.model_fields.get(info.field_name or "")
        if (
            field is not None
            and field.annotation in (timedelta, timedelta | None)
            and isinstance(value, str)
            and _SECONDS.fullmatch(value.strip())
        ):
            return float(value)
        return value

    @field_validator(
        "jwt_key_ttl",
        "rotation_interval",
        "bundle_reload_interval",
        "crl_validity",
        "ocsp_validity",
    )
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be a positive duration, got {value}")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_sentinels(value)  # ValueError names the bad entry
        return value

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _listen_has_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{info.field_name} must be HOST:PORT, got {value!r}")
        return value

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.env == "production":
            secret = self.key_passphrase.get_secret_value() if self.key_passphrase else ""
            if not secret:
                raise ValueError("production needs TRUSTD_KEY_PASSPHRASE to encrypt CA keys")
            if secret.lower() in _PLACEHOLDER_SECRETS or len(secret) < _MIN_PASSPHRASE_LENGTH:
                raise ValueError(
                    f"TRUSTD_KEY_PASSPHRASE looks like a placeholder; use at least "
                    f"{_MIN_PASSPHRASE_LENGTH} random characters"
                )
        self._policy_rules()
        if (self.upstream_ca_cert is None) != (self.upstream_ca_key is None):
            raise ValueError("upstream_ca_cert and upstream_ca_key must be given together")
        self._pkcs11_rules()
        return self

    def _pkcs11_rules(self) -> None:
        if self.ca_key_backend == "pkcs11" and self.pkcs11_module is None:
            raise ValueError("ca_key_backend=pkcs11 needs TRUSTD_PKCS11_MODULE")
        if self.pkcs11_module is None:
            return
        if not self.pkcs11_token_label:
            raise ValueError("TRUSTD_PKCS11_MODULE needs TRUSTD_PKCS11_TOKEN_LABEL")
        if (self.pkcs11_pin is None) == (self.pkcs11_pin_file is None):
            raise ValueError("give one of TRUSTD_PKCS11_PIN or TRUSTD_PKCS11_PIN_FILE")
        if self.ca_key_backend == "pkcs11":
            ec_types = (KeyType.EC_P256, KeyType.EC_P384)
            for name, value in (("key_type", self.key_type), ("jwt_key_type", self.jwt_key_type)):
                if value not in ec_types:
                    raise ValueError(f"ca_key_backend=pkcs11 makes EC keys: {name} is {value}")

    def _policy_rules(self) -> None:
        if self.policy_engine == "remote" and not self.policy_remote_url:
            raise ValueError("policy_engine=remote needs TRUSTD_POLICY_REMOTE_URL")
        # Decisions without authentication only for a listener no other host can reach.
        if self.policy_api_auth == "none" and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("policy_api_auth=none is allowed only on a loopback listen address")
        if self.policy_api_auth == "mtls" and not self.policy_api_identities:
            raise ValueError("policy_api_auth=mtls needs TRUSTD_POLICY_API_IDENTITIES")
        metrics = self.metrics_token.get_secret_value() if self.metrics_token else None
        if metrics is not None and (
            len(metrics) < _MIN_PASSPHRASE_LENGTH or metrics.lower() in _PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                f"TRUSTD_METRICS_TOKEN must be at least {_MIN_PASSPHRASE_LENGTH} random characters"
            )
        token = self.policy_api_token.get_secret_value() if self.policy_api_token else None
        if token is not None and (
            len(token) < _MIN_PASSPHRASE_LENGTH or token.lower() in _PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                f"TRUSTD_POLICY_API_TOKEN must be at least {_MIN_PASSPHRASE_LENGTH} random "
                "characters"
            )

    @property
    def redis_sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        return _parse_sentinels(self.redis_sentinels) if self.redis_sentinels else ()

    @property
    def uses_redis(self) -> bool:
        """Replicas share Redis (directly or through Sentinel)."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def trust_domain_obj(self) -> TrustDomain:
        return TrustDomain.parse(self.trust_domain)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def listens_on_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trustd.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is not an address to publish
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / "admin.sock"

    @property
    def bundle_path(self) -> Path:
        return self.data_dir / "bundle.pem"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def kek_path(self) -> Path:
        return self.data_dir / "kek"


def _parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    addresses = []
    for entry in (e.strip() for e in value.split(",")):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"redis_sentinels entries must be HOST:PORT, got {entry!r}")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, the TOML file and explicit overrides.

    Raises:
        SettingsError: a value is invalid; the message names the setting.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
