"""Workload addresses read from /proc: real processes in a real network namespace (made
here, holding only addresses inside it), the agent's own namespace, exits and pid reuse,
and a real Workload API caller from inside the namespace."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pki.clock import FakeClock
from pki.spiffe_id import SpiffeId
from tests.unit.pki_helpers import T0
from tests.workload_helpers import Domain
from trustd.agent.addresses import WorkloadAddresses, ipv4_addresses, ipv6_addresses
from trustd.agent.cache import SvidCache
from trustd.agent.workload_api import start_workload_api
from trustd.agent.workload_attestor import PeerCredentials, WorkloadProcess

SLEEP = shutil.which("sleep") or "/bin/sleep"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
WEB = SpiffeId.parse("spiffe://example.org/web")

# /proc/net/fib_trie of a namespace with 10.77.0.5/24 and 10.77.1.9/32 on one interface,
# as Linux 6.18 printed it (the Local table repeats the Main one and is left out here),
# with a link-local leaf added.
FIB_TRIE = b"""Main:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.77.0.0/23 3 0 5
        +-- 10.77.0.0/29 2 0 2
           |-- 10.77.0.0
              /24 link UNICAST
           |-- 10.77.0.5
              /32 host LOCAL
        |-- 10.77.0.255
           /32 link BROADCAST
        |-- 10.77.1.9
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 169.254.0.0/16 2 0 2
        |-- 169.254.3.3
           /32 host LOCAL
"""


def test_fib_trie_local_host_leaves_are_the_addresses() -> None:
    # Loopback and link-local addresses identify no workload; broadcast and subnet
    # leaves are not addresses at all.
    assert ipv4_addresses(FIB_TRIE) == {"10.77.0.5", "10.77.1.9"}
    assert ipv4_addresses(b"") == frozenset()
    assert ipv4_addresses(b"|-- 10.1.1.1\n/24 link UNICAST\n+-- x\n/32 host LOCAL\n") == set()


# /proc/net/if_inet6 of a namespace (as Linux 6.18 prints it): a ULA and a global address
# on eth0, its link-local one, loopback, one still tentative (flags 0x40), one whose
# duplicate address detection failed (0x08, with 0x40 cleared), a deprecated one (0x20:
# still assigned) and a site-local one.
IF_INET6 = b"""fd002130001000000000000000000005 02 40 00 80     eth0
20010db8021300000000000000000007 02 40 00 00     eth0
fe80000000000000a8bbccfffe00dd01 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd002130001000000000000000000009 02 40 00 c0     eth0
fd00213000100000000000000000000a 02 40 00 88     eth0
fd00213000100000000000000000000b 02 40 00 a0     eth0
fec00000000000000000000000000001 02 40 40 80     eth0
"""


def test_if_inet6_assigned_global_and_unique_local_addresses() -> None:
    # RFC 4291 §2.5.6: a link-local address is on every link and names no one workload;
    # RFC 4862 §5.4: a tentative (or duplicate) address is not assigned yet.
    assert ipv6_addresses(IF_INET6) == {"fd00:2130:10::5", "2001:db8:213::7", "fd00:2130:10::b"}
    assert ipv6_addresses(b"") == frozenset()
    assert ipv6_addresses(b"zz 02 40 00 80 eth0\nfd00 02 40 00 80 eth0\n") == set()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with 10.213.90.5/24, fd00:213:90::5/64 and link-local addresses (the
    IPv6 one the kernel adds itself) on a veth pair whose both ends are inside it."""
    name = f"tdu{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", name, "addr", "add", "10.213.90.5/24", "dev", "v0")
        ip("-n", name, "addr", "add", "169.254.90.5/16", "dev", "v0")
        # No duplicate address detection: assigned at once, not tentative.
        ip("-n", name, "addr", "add", "fd00:213:90::5/64", "dev", "v0", "nodad")
        for dev in ("lo", "v0", "v1"):
            ip("-n", name, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _start(*command: str) -> subprocess.Popen[bytes]:
    # `ip netns exec` enters the namespace and execs the command: the pid is the sleeper's,
    # once it has entered; a workload calling the agent is already where it runs.
    process = subprocess.Popen(list(command))
    deadline = time.monotonic() + 5
    while Path(f"/proc/{process.pid}/exe").resolve() != Path(command[-2]).resolve():
        assert time.monotonic() < deadline, f"{command} did not start"
        time.sleep(0.01)
    return process


def _identity(process: subprocess.Popen[bytes]) -> tuple[PeerCredentials, int]:
    credentials = PeerCredentials(process.pid, 0, 0)
    handle = WorkloadProcess.open(credentials)
    handle.close()
    return credentials, handle.start_time


class Changes:
    """The tracker's `on_change`: counts calls and wakes whoever waits for a condition."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self._event.clear()
                await self._event.wait()


@needs_root
def test_tracks_a_namespaced_process_and_forgets_it_when_it_exits(netns: str) -> None:
    inside = _start("ip", "netns", "exec", netns, SLEEP, "60")
    host = _start(SLEEP, "60")
    try:

        async def scenario() -> None:
            changes = Changes()
            tracker = WorkloadAddresses(changes, refresh_interval=0.2)
            worker = asyncio.create_task(tracker.run())
            first = {"10.213.90.5", "fd00:213:90::5"}
            both = {*first, "10.213.91.7", "2001:db8:213:91::7"}
            try:
                # A host-network workload is noted but reports nothing.
                tracker.observe(*_identity(host), [SpiffeId.parse("spiffe://example.org/h")])
                tracker.observe(*_identity(inside), [WEB])
                await changes.until(lambda: changes.count >= 1)
                assert tracker.by_identity() == {str(WEB): first}

                # More addresses are picked up on the next pass.
                ip("-n", netns, "addr", "add", "10.213.91.7/32", "dev", "v0")
                ip("-n", netns, "addr", "add", "2001:db8:213:91::7/128", "dev", "v0", "nodad")
                await changes.until(lambda: tracker.by_identity()[str(WEB)] == both)

                # Matching nothing any more: forgotten at once.
                seen = changes.count
                tracker.observe(*_identity(inside), [])
                assert tracker.by_identity() == {}
                assert changes.count == seen + 1
                tracker.observe(*_identity(inside), [WEB])
                await changes.until(lambda: changes.count == seen + 2)
                assert tracker.by_identity() == {str(WEB): both}

                # The process exits: its addresses go on the next pass.
                inside.kill()
                inside.wait()
                await changes.until(lambda: not tracker.by_identity())
            finally:
                worker.cancel()

        asyncio.run(scenario())
    finally:
        for process in (inside, host):
            process.kill()
            process.wait()


@needs_root
def test_exited_callers_and_reused_pids_are_not_tracked(netns: str) -> None:
    inside = _start("ip", "netns", "exec", netns, SLEEP, "60")
    gone = _start(SLEEP, "60")
    gone_identity = _identity(gone)
    gone.kill()
    gone.wait()
    try:

        async def scenario() -> None:
            changes = Changes()
            tracker = WorkloadAddresses(changes, refresh_interval=0.2)
            worker = asyncio.create_task(tracker.run())
            try:
                credentials, start_time = _identity(inside)
                # Same pid, another start time: another process. And one that is gone.
                tracker.observe(credentials, start_time + 1, [WEB])
                tracker.observe(*gone_identity, [WEB])
                # A real caller observed after them is read in the same or a later pass.
                tracker.observe(credentials, start_time, [SpiffeId.parse("spiffe://example.org/x")])
                await changes.until(lambda: changes.count >= 1)
                assert tracker.by_identity() == {
                    "spiffe://example.org/x": {"10.213.90.5", "fd00:213:90::5"}
                }
            finally:
                worker.cancel()

        asyncio.run(scenario())
    finally:
        inside.kill()
        inside.wait()


CALLER = """
import sys
import grpc
from trustd.agent.proto import workload_pb2 as pb
from trustd.agent.proto import workload_pb2_grpc as pb_grpc

with grpc.insecure_channel("unix:" + sys.argv[1]) as channel:
    stream = pb_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
        pb.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),)
    )
    print(next(stream).svids[0].spiffe_id, flush=True)
    sys.stdin.read()
"""


@needs_root
def test_a_workload_api_caller_in_a_namespace_is_noted(netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        domain = Domain(FakeClock(T0))
        cache = SvidCache()
        entry = domain.entry("e-web", "/web", f"unix:uid:{os.getuid()}")
        await cache.set_entries([entry])
        await cache.set_bundle(domain.bundle())
        await cache.put_svid(domain.svid(entry))
        changes = Changes()
        tracker = WorkloadAddresses(changes)
        worker = asyncio.create_task(tracker.run())
        path = tmp_path / "workload.sock"
        server = await start_workload_api(
            path, cache, domain.jwt_source(), clock=domain.clock, addresses=tracker
        )
        caller = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            CALLER,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert caller.stdout is not None
            async with asyncio.timeout(20):
                said = await caller.stdout.readline()
                assert said.decode().strip() == "spiffe://example.org/web"
                await changes.until(lambda: changes.count >= 1)
            assert tracker.by_identity() == {
                "spiffe://example.org/web": {"10.213.90.5", "fd00:213:90::5"}
            }
        finally:
            caller.kill()
            await caller.wait()
            await server.stop(None)
            worker.cancel()

    asyncio.run(scenario())
