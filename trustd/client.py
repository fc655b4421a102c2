"""The CLI's way to the server: the admin socket on this host, or `--server URL` + token."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from pki.errors import TrustdError


class ClientError(TrustdError):
    title = "Request failed"


class AdminClient:
    def __init__(
        self,
        server: str | None,
        token: str | None,
        ca_bundle: Path | None,
        socket_path: Path,
        timeout: float = 30.0,
    ) -> None:
        if server:
            if not token:
                raise ClientError(
                    "--server needs an admin token: pass --token or set TRUSTD_ADMIN_TOKEN"
                )
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True
            )
            self._client = httpx.Client(
                base_url=server.rstrip("/"),
                headers={"Authorization": f"Bearer {token}"},
                verify=verify,
                timeout=timeout,
            )
            self._where = server
        else:
            if not socket_path.exists():
                raise ClientError(
                    f"no admin socket at {socket_path}: start `trustd serve` on this host, "
                    "or use --server URL --token TOKEN"
                )
            self._client = httpx.Client(
                base_url="http://trustd",
                transport=httpx.HTTPTransport(uds=str(socket_path)),
                timeout=timeout,
            )
            self._where = str(socket_path)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Raises:
        ClientError: the server is unreachable or answered with a problem document.
        """
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach trustd at {self._where}: {exc}") from None
        if response.is_error:
            try:
                problem = response.json()
                detail = f"{problem.get('title', 'error')}: {problem.get('detail', '')}"
            except ValueError:
                detail = response.text[:200]
            raise ClientError(f"{response.status_code} {detail}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()
