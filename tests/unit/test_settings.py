"""Settings: defaults, the environment and the TOML file, and what is refused."""

from __future__ import annotations

import os
import ssl
from datetime import timedelta
from pathlib import Path

import pytest

from pki.keys import KeyType
from trustd.redis_clients import redis_target
from trustd.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRUSTD_"):
            monkeypatch.delenv(name)


def test_defaults_are_a_working_dev_setup() -> None:
    s = load_settings()
    assert s.trust_domain == "example.org"
    assert s.listen == "127.0.0.1:8443"
    assert s.tls is True
    assert s.key_type is KeyType.EC_P256
    assert s.x509_svid_ttl == timedelta(hours=1)
    assert s.jwt_svid_ttl == timedelta(minutes=5)
    assert s.resolved_database_url == f"sqlite:///{Path('var/trustd.db').resolve()}"


def test_environment_and_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "trustd.toml"
    config.write_text(
        'trust_domain = "prod.example"\nlisten = "0.0.0.0:9443"\nx509_svid_ttl = 900\n'
    )
    monkeypatch.setenv("TRUSTD_CONFIG", str(config))
    monkeypatch.setenv("TRUSTD_LISTEN", "127.0.0.1:7443")
    s = load_settings()
    assert s.trust_domain == "prod.example"
    assert s.listen == "127.0.0.1:7443"  # the environment wins over the file
    assert s.x509_svid_ttl == timedelta(seconds=900)


def test_trust_domain_is_canonicalised_and_checked() -> None:
    assert load_settings(trust_domain="spiffe://corp.example").trust_domain == "corp.example"
    with pytest.raises(SettingsError, match="trust_domain"):
        load_settings(trust_domain="Bad_Domain!")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_key_type": "ed25519"}, "Ed25519"),
        ({"jwt_key_type": "ml-dsa-65"}, "no JWS algorithm"),
        ({"listen": "8443"}, "HOST:PORT"),
        ({"env": "production"}, "TRUSTD_KEY_PASSPHRASE"),
        ({"env": "production", "key_passphrase": "changeme"}, "placeholder"),
        ({"upstream_ca_cert": "/x.pem"}, "together"),
        ({"unknown_setting": 1}, "unknown_setting"),
        ({"policy_default_decision": "/system/../main"}, "policy_default_decision"),
        ({"policy_default_decision": ""}, "policy_default_decision"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(**overrides)


@pytest.mark.parametrize("key_type", ["ml-dsa-44", "ml-dsa-65", "ml-dsa-87"])
def test_an_ml_dsa_trust_domain_needs_a_tls_stack_that_verifies_it(key_type: str) -> None:
    # Debian 12's OpenSSL 3.0 (this Python's ssl) has no ML-DSA: refused, saying why.
    if ssl.OPENSSL_VERSION_INFO < (3, 5):
        with pytest.raises(
            SettingsError,
            match=f"TRUSTD_KEY_TYPE={key_type} with no classical CA chain: .*agents could not "
            "connect .*OpenSSL 3.5.*TRUSTD_ADDITIONAL_CA_KEY_TYPES=ec-p256",
        ):
            load_settings(key_type=key_type)
    else:
        assert load_settings(key_type=key_type).key_type == KeyType(key_type)
    # With an EC chain beside it, the server's TLS and the agents stay on EC.
    mixed = load_settings(key_type=key_type, additional_ca_key_types=["ec-p256"])
    assert mixed.tls_key_type is KeyType.EC_P256
    assert mixed.ca_key_types == {key_type: KeyType(key_type), "classical": KeyType.EC_P256}


def test_additional_ca_key_types_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTD_ADDITIONAL_CA_KEY_TYPES", "ml-dsa-65, ml-dsa-87")
    s = load_settings()
    assert s.additional_ca_key_types == [KeyType.ML_DSA_65, KeyType.ML_DSA_87]
    assert s.tls_key_type is KeyType.EC_P256
    assert list(s.ca_key_types) == ["classical", "ml-dsa-65", "ml-dsa-87"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"additional_ca_key_types": ["ec-p384"]}, "at most one classical key type"),
        ({"additional_ca_key_types": ["ml-dsa-65", "ml-dsa-65"]}, "repeats a chain"),
        ({"additional_ca_key_types": ["ml-dsa-66"]}, "ml-dsa-65"),
    ],
)
def test_additional_ca_key_types_are_checked(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(**overrides)


def test_production_accepts_a_real_passphrase() -> None:
    s = load_settings(env="production", key_passphrase="k3y-" + "x" * 30)
    assert s.key_passphrase is not None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "https://127.0.0.1:8443"),
        ({"tls": False, "listen": "0.0.0.0:80"}, "http://localhost:80"),
        ({"listen": "[::1]:8443"}, "https://[::1]:8443"),
        ({"public_url": "https://trustd.corp.example/"}, "https://trustd.corp.example"),
    ],
)
def test_base_url(overrides: dict[str, object], expected: str) -> None:
    assert load_settings(**overrides).base_url == expected


def test_rotation_durations_must_be_positive() -> None:
    with pytest.raises(SettingsError, match=r"crl_validity: .*positive duration"):
        load_settings(crl_validity=0)
    assert load_settings(rotation_interval="PT1S").rotation_interval.total_seconds() == 1


def test_log_format_and_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.log_format, s.access_log) == ("auto", "default")
    monkeypatch.setenv("TRUSTD_LOG_FORMAT", "json")
    monkeypatch.setenv("TRUSTD_ACCESS_LOG", "all")
    s = load_settings()
    assert (s.log_format, s.access_log) == ("json", "all")
    # The command line's --log-format and --access-log win over the environment.
    s = load_settings(log_format="console", access_log="off")
    assert (s.log_format, s.access_log) == ("console", "off")
    monkeypatch.setenv("TRUSTD_LOG_FORMAT", "text")
    with pytest.raises(SettingsError, match="log_format"):
        load_settings()


_PKCS11 = {
    "ca_key_backend": "pkcs11",
    "pkcs11_module": Path("/usr/lib/softhsm/libsofthsm2.so"),
    "pkcs11_token_label": "ca",
    "pkcs11_pin": "1234",
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ca_key_backend": "pkcs11"}, "needs TRUSTD_PKCS11_MODULE"),
        ({**_PKCS11, "pkcs11_token_label": None}, "needs TRUSTD_PKCS11_TOKEN_LABEL"),
        ({**_PKCS11, "pkcs11_pin": None}, "one of TRUSTD_PKCS11_PIN or TRUSTD_PKCS11_PIN_FILE"),
        ({**_PKCS11, "pkcs11_pin_file": Path("pin")}, "one of TRUSTD_PKCS11_PIN"),
        ({**_PKCS11, "key_type": KeyType.ED25519}, "makes EC keys: key_type"),
        ({**_PKCS11, "jwt_key_type": KeyType.RSA_2048}, "makes EC keys: jwt_key_type"),
        (
            {**_PKCS11, "additional_ca_key_types": [KeyType.ML_DSA_65]},
            "makes EC keys: additional_ca_key_types",
        ),
        ({"ca_key_backend": "hsm"}, "ca_key_backend"),
    ],
)
def test_pkcs11_settings_are_complete(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(**overrides)


def test_pkcs11_settings() -> None:
    settings = load_settings(**_PKCS11, key_type=KeyType.EC_P384)
    assert settings.ca_key_backend == "pkcs11"
    assert settings.pkcs11_pin is not None and "1234" not in repr(settings)
    assert load_settings().ca_key_backend == "file"


def test_redis_through_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redis_target(load_settings()) is None
    monkeypatch.setenv("TRUSTD_REDIS_SENTINELS", "127.0.0.1:26379, [::1]:26380")
    monkeypatch.setenv("TRUSTD_REDIS_SERVICE", "trustd-ha")
    s = load_settings()
    assert s.uses_redis
    target = redis_target(s)
    assert target is not None
    assert target.sentinels == (("127.0.0.1", 26379), ("::1", 26380))
    assert target.service == "trustd-ha"
    assert "26380" in str(target)
    monkeypatch.setenv("TRUSTD_REDIS_SENTINELS", "127.0.0.1")
    with pytest.raises(SettingsError, match="HOST:PORT"):
        load_settings()


def test_durations_from_the_environment_take_plain_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # README: "ISO 8601 durations or seconds"; from the environment both are strings.
    monkeypatch.setenv("TRUSTD_ROTATION_INTERVAL", "2")
    monkeypatch.setenv("TRUSTD_X509_SVID_TTL", "PT2H")
    monkeypatch.setenv("TRUSTD_CRL_VALIDITY", "0.5")
    settings = load_settings()
    assert settings.rotation_interval == timedelta(seconds=2)
    assert settings.x509_svid_ttl == timedelta(hours=2)
    assert settings.crl_validity == timedelta(seconds=0.5)
    monkeypatch.setenv("TRUSTD_ROTATION_INTERVAL", "2 minutes")
    with pytest.raises(SettingsError, match="rotation_interval"):
        load_settings()
