"""OpenTelemetry: a real `trustd serve` and `trustd agent` export their spans over OTLP/gRPC
to a collector served in this test (the OTLP TraceService from opentelemetry-proto,
receiving real export requests), and the agent's requests carry W3C `traceparent` so that
the server's spans are children of the agent's. Off (no endpoint), neither the trace SDK
nor the exporter is even imported."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.integration.conftest import join_agent_command, start_server, tls

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Received:
    service: str
    span: trace_pb2.Span

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: a.value.string_value or a.value.int_value for a in self.span.attributes}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span of every export request."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(Received(service, s) for s in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span(self, span_id: bytes) -> Received:
        with self._lock:
            return next(r for r in self.spans if r.span.span_id == span_id)

    def ancestors(self, span: trace_pb2.Span) -> list[bytes]:
        """The ids of `span`'s parent, its parent's parent, ... as far as received."""
        with self._lock:
            by_id = {r.span.span_id: r.span for r in self.spans}
        chain, parent = [], span.parent_span_id
        while parent in by_id:
            chain.append(parent)
            parent = by_id[parent].parent_span_id
        return chain

    def named(self, service: str, name: str) -> list[Received]:
        with self._lock:
            return [r for r in self.spans if r.service == service and r.span.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)


def wait_for_span(collector: Collector, service: str, name: str) -> list[Received]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = collector.named(service, name)
        if found:
            return found
        time.sleep(0.1)
    seen = sorted({(r.service, r.span.name) for r in collector.spans})
    pytest.fail(f"no {service} span {name!r}; received: {seen}")


def test_agent_and_server_spans_reach_the_collector_as_one_trace(
    tmp_path: Path, collector: tuple[Collector, str]
) -> None:
    receiver, endpoint = collector
    # Export within 100 ms rather than the SDK's 5 s batches.
    env = {"TRUSTD_OTEL_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = start_server(tmp_path / "var", tmp_path / "server.log", **env)
    sockets = Path(tempfile.mkdtemp(prefix="trustd-otel-"))
    agent = None
    try:
        command = join_agent_command(server, sockets)
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        with (tmp_path / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                command, env={**agent_env, **env}, stdout=log, stderr=subprocess.STDOUT
            )

        # The agent's attestation: its client span, the server's span for the request as
        # its child (the traceparent it sent), and the attestation and issuance inside.
        attest_client = wait_for_span(receiver, "trustd-agent", "POST /v1/attest")[0].span
        attest_server = wait_for_span(receiver, "trustd-server", "POST /v1/attest")[0].span
        assert attest_server.trace_id == attest_client.trace_id
        assert attest_server.parent_span_id == attest_client.span_id
        assert attest_client.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        assert attest_server.kind == trace_pb2.Span.SPAN_KIND_SERVER
        attestation = wait_for_span(receiver, "trustd-server", "trustd.attestation")[0].span
        assert attestation.trace_id == attest_client.trace_id
        assert attest_server.span_id in receiver.ancestors(attestation)
        issuance = [
            r.span
            for r in wait_for_span(receiver, "trustd-server", "trustd.issuance")
            if r.span.trace_id == attest_client.trace_id
        ]
        assert issuance and issuance[0].parent_span_id == attestation.span_id
        served = next(
            r
            for r in receiver.named("trustd-server", "POST /v1/attest")
            if r.span.span_id == attest_server.span_id
        )
        assert served.attributes["http.response.status_code"] == 201

        # The sync long-poll, continued from the agent's trace the same way. The agent's
        # client span ends (and is exported) only when its long-poll returns, after the
        # server's spans: wait for the chain to reach it.
        sync = wait_for_span(receiver, "trustd-server", "trustd.sync")[0].span
        deadline = time.monotonic() + 20
        while True:
            chain = [receiver.span(i) for i in receiver.ancestors(sync)]
            if (chain and chain[-1].service == "trustd-agent") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert chain, "no parent of the sync span was received"
        request = next(r for r in chain if r.span.kind == trace_pb2.Span.SPAN_KIND_SERVER)
        assert request.span.name == "GET /v1/agents/sync"
        assert chain[-1].service == "trustd-agent"
        assert chain[-1].span.kind == trace_pb2.Span.SPAN_KIND_CLIENT

        # A policy decision through the OPA Data API.
        decided = httpx.post(
            f"{server.url}/v1/data/trustd/admin/allow",
            json={"input": {"role": "viewer", "permission": "admin:entry:read"}},
            headers={"Authorization": f"Bearer {server.token}"},
            verify=tls(server.bundle),
        )
        assert decided.status_code == 200 and decided.json()["result"] is True
        decision = wait_for_span(receiver, "trustd-server", "trustd.policy.decision")[0]
        names = [receiver.span(i).span.name for i in receiver.ancestors(decision.span)]
        assert names[-1] == "POST /v1/data/{path}"

        # X509-SVID issuance from a caller known without the database (the token the
        # decision just used) is answered on its lean path: its server span is still named
        # after the route, with the issuance inside it.
        issued = httpx.post(
            f"{server.url}/v1/svid/x509",
            json={
                "spiffe_id": "spiffe://example.org/traced",
                "csr": create_csr(generate_private_key(KeyType.EC_P256)),
            },
            headers={"Authorization": f"Bearer {server.token}"},
            verify=tls(server.bundle),
        )
        assert issued.status_code == 201, issued.text
        route = wait_for_span(receiver, "trustd-server", "POST /v1/svid/x509")[0].span
        deadline = time.monotonic() + 20
        inside: list[trace_pb2.Span] = []
        while not inside and time.monotonic() < deadline:
            inside = [
                r.span
                for r in receiver.named("trustd-server", "trustd.issuance")
                if r.span.parent_span_id == route.span_id
            ]
            time.sleep(0.1)
        assert inside, "no issuance span inside the X509-SVID request's span"
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        server.stop()
        shutil.rmtree(sockets, ignore_errors=True)
    assert receiver.requests > 0


def test_off_by_default_the_trace_sdk_is_not_loaded() -> None:
    probe = (
        "import sys, trustd.app, trustd.agent.main, trustd.tracing as t\n"
        "t.configure(None, 'x')\n"
        "assert not t.enabled() and t.traced('a')(lambda x: x + 1)(1) == 2\n"
        "sdk = ('opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "loaded = [m for m in sys.modules if m.startswith(sdk)]\n"
        "assert not loaded, loaded\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
