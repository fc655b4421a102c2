"""Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) served by the agent,
with the protos from PyPI (`xds-protos`, generated from envoyproxy/data-plane-api).

Identity comes from `attributes.source.certificate`, the URL-encoded PEM of the peer
certificate Envoy verified on the mTLS listener (ext_authz `include_peer_certificate: true`),
verified again against the agent's bundle as the HTTP endpoint does; Envoy's
`attributes.source.principal` (its URI SAN) must match it. The destination is
`attributes.destination.principal` (the listener's own SVID), the port the destination
socket address's. The decision is the HTTP endpoint's own (`Authorizer.decide`),
made on the event loop's thread: the regorus engine is bound to the thread that created it.
"""

from __future__ import annotations

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from trustd.agent.extauthz import Authorizer
from trustd.domain.flows import Reason

log = structlog.get_logger("trustd.agent.extauthz_grpc")


class Authorization(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Check answers OK, or PERMISSION_DENIED with a 403 for Envoy to send the client."""

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(  # noqa: N802 (the gRPC method name)
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.CheckResponse:
        attributes = request.attributes
        http = attributes.request.http
        destination = attributes.destination.principal
        source: str | None = None
        if attributes.source.certificate:
            source, reason = self._authorizer.identify(
                attributes.source.certificate, attributes.source.principal or None
            )
        else:
            reason = "no peer certificate (mTLS listener, include_peer_certificate: true)"
        if not source:
            allowed = False
            self._authorizer.record(
                None,
                destination or None,
                attributes.destination.address.socket_address.port_value,
                http.method,
                http.path,
                False,
                Reason.REVOKED if reason.endswith("is revoked") else Reason.POLICY,
                source_address=attributes.source.address.socket_address.address,
                destination_address=attributes.destination.address.socket_address.address,
                host=http.host,
            )
        elif not destination:
            allowed, reason = False, "no destination principal"
        else:
            allowed, reason = self._authorizer.decide(
                source,
                destination,
                attributes.destination.address.socket_address.port_value,
                http.method,
                http.path,
                source_address=attributes.source.address.socket_address.address,
                destination_address=attributes.destination.address.socket_address.address,
                host=http.host,
            )
        if allowed:
            return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
        return pb.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=reason),
            denied_response=pb.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden), body=reason
            ),
        )


async def start_extauthz_grpc(
    host: str, port: int, authorizer: Authorizer
) -> tuple[grpc.aio.Server, int]:
    """Serve Authorization/Check on `host:port` (plaintext: keep it on loopback or the node,
    as Envoy's ext_authz cluster on the same host); returns the server and the bound port.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(Authorization(authorizer), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("extauthz_grpc_listening", address=f"{host}:{bound}")
    return server, bound
