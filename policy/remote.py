"""The remote policy engine: an OPA server's Data API (or another trustd's) through
`opa-python-client`, behind the same protocol as the embedded engine."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client.errors import ConnectionsError
from opa_client.opa import OpaClient

from policy.engine import UNDEFINED, Result, parse_path
from policy.errors import InvalidInput, PolicyCompileError, PolicyEvaluationError, UnknownPath


class RemoteEngine:
    """An OPA server's Data API through `opa-python-client`, one client per thread."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote policy engine URL must be http(s)://host:port, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = parts.scheme == "https"
        self._token = token
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self._local = threading.local()

    def _client(self) -> OpaClient:
        client: OpaClient | None = getattr(self._local, "client", None)
        if client is None:
            # opa-python-client takes the CA file to verify against as its `ssl` argument.
            tls: bool | str = (self._ca_bundle or True) if self._ssl else False
            client = OpaClient(
                host=self._host,
                port=self._port,
                ssl=tls,
                token=self._token,
                timeout=self._timeout,
                retries=0,
            )
            if self._ca_bundle:
                # requests lets REQUESTS_CA_BUNDLE override a session's CA file: the
                # configured CA must win, so the environment is not consulted.
                client._session.trust_env = False
            self._local.client = client
        return client

    def evaluate(self, rule: str, input: Any) -> Any:
        result = self.query(rule, json.dumps(input))
        return result.value if result.defined else None

    def query(self, path: str, input_json: str, *, strict: bool = False) -> Result:
        if strict:
            # opa-python-client cannot pass `strict-builtin-errors` on: refuse rather than
            # answer with the remote server's lenient evaluation.
            raise InvalidInput("strict-builtin-errors is not supported with the remote engine")
        segments = parse_path(path)
        if not segments:
            raise UnknownPath("the remote engine answers rule and package paths, not data")
        try:
            body = self._client().query_rule(json.loads(input_json), ".".join(segments))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                raise UnknownPath(f"the remote engine has no policy at {path}") from None
            raise PolicyEvaluationError(
                f"remote engine {self.url} answered {status}", rule=path
            ) from None
        except requests.RequestException as exc:
            raise PolicyEvaluationError(
                f"remote engine {self.url} unreachable: {type(exc).__name__}", rule=path
            ) from None
        return Result(True, body["result"]) if "result" in body else UNDEFINED

    def health(self) -> bool:
        """Whether the remote server answers its health check."""
        try:
            return bool(self._client().check_health())
        except ConnectionsError:
            return False

    def put_policy(self, policy_id: str, source: str) -> None:
        """Upload one module.

        Raises:
            PolicyCompileError: the remote server refused it.
        """
        try:
            self._client().update_policy_from_string(source, policy_id, rego_compat=False)
        except Exception as exc:
            raise PolicyCompileError(str(exc), module=policy_id) from None
