"""Which addresses the node's workloads hold, learnt from the callers of the Workload API.

When a caller matches entries, the Workload API notes the process (pid and start time: a
pid alone may be reused) with the SPIFFE IDs it matched; that costs the call a dictionary
look-up. Off the call's path, a worker reads the addresses of the process's network
namespace: ``/proc/<pid>/net`` shows the namespace of that process (proc(5)); the /32
``host LOCAL`` leaves of its ``fib_trie`` are the IPv4 addresses assigned in it, and its
``if_inet6`` lists the IPv6 ones. Both families are reported, less what cannot identify a
workload (`trustd.addresses`: IPv6 link-local addresses among them, RFC 4291 §2.5.6). A
process in the agent's own network namespace is a host-network workload: its addresses
are the node's, name no single workload, and are not reported.

Every `refresh_interval` the tracked processes are read again: one that exited is
forgotten (and its addresses with it, unless another tracked process holds them), and
address changes are picked up. A process that exits before it is read is simply not
tracked; nothing here fails a workload's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import structlog

from pki.spiffe_id import SpiffeId
from trustd.addresses import workload_address_problem
from trustd.agent.errors import WorkloadAttestationError
from trustd.agent.workload_attestor import PeerCredentials, WorkloadProcess, read_proc_file

log = structlog.get_logger("trustd.agent")

REFRESH_INTERVAL = 10.0
MAX_TRACKED = 4096
# A network namespace, as the kernel names it: (device, inode) of its nsfs file.
Namespace = tuple[int, int]


# if_inet6 flags (include/uapi/linux/if_addr.h): an address still undergoing duplicate
# address detection, or one that failed it, is not assigned to the interface (RFC 4862
# §5.4): packets to it are not accepted, so it names no one yet.
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


def _workload_addresses(values: Iterable[str]) -> frozenset[str]:
    out = set()
    for value in values:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(value)
            if workload_address_problem(address) is None:
                out.add(str(address))
    return frozenset(out)


def ipv4_addresses(fib_trie: bytes) -> frozenset[str]:
    """The IPv4 addresses assigned in a network namespace, from its ``/proc/net/fib_trie``:
    the leaves with a ``/32 host LOCAL`` alias, less those that cannot identify a workload
    (loopback, link-local and the like, `trustd.addresses`)."""
    found: set[str] = set()
    leaf: str | None = None
    for raw in fib_trie.decode("ascii", "replace").splitlines():
        line = raw.strip()
        if line.startswith("|-- "):
            leaf = line[4:]
        elif line.startswith("+-- "):
            leaf = None
        elif leaf is not None and line == "/32 host LOCAL":
            found.add(leaf)
    return _workload_addresses(found)


def ipv6_addresses(if_inet6: bytes) -> frozenset[str]:
    """The IPv6 addresses assigned in a network namespace, from its ``/proc/net/if_inet6``
    (one line per address: 32 hex digits, interface index, prefix length, scope, flags and
    interface name), less tentative and duplicate ones and those that cannot identify a
    workload (loopback, link-local and the like, `trustd.addresses`)."""
    found = []
    for line in if_inet6.decode("ascii", "replace").splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            flags = int(fields[4], 16)
            packed = bytes.fromhex(fields[0])
        except ValueError:
            continue
        if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            continue
        found.append(str(ipaddress.IPv6Address(packed)))
    return _workload_addresses(found)


def _namespace(info: os.stat_result) -> Namespace:
    return (info.st_dev, info.st_ino)


@dataclass(frozen=True)
class _Caller:
    credentials: PeerCredentials
    start_time: int


@dataclass(frozen=True)
class _Network:
    # None: the agent's own namespace (a host-network workload).
    namespace: Namespace | None
    addresses: frozenset[str]


@dataclass(frozen=True)
class _Seen:
    network: _Network
    spiffe_ids: frozenset[str]


class WorkloadAddresses:
    """The tracked callers and their addresses. `observe` and `by_identity` run on the
    agent's event loop, `run` is its worker; `on_change` is called (on the loop) whenever
    `by_identity` may have changed."""

    def __init__(
        self,
        on_change: Callable[[], None],
        proc_root: str = "/proc",
        refresh_interval: float = REFRESH_INTERVAL,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._on_change = on_change
        self._proc_root = proc_root
        self._own = _namespace(os.stat(f"{proc_root}/self/ns/net"))
        # A kernel without IPv6 has no if_inet6 in any namespace.
        self._ipv6 = os.path.exists(f"{proc_root}/self/net/if_inet6")
        self._refresh_interval = refresh_interval
        self._max_tracked = max_tracked
        self._tracked: dict[_Caller, _Seen] = {}
        self._pending: dict[_Caller, frozenset[str]] = {}
        self._wake = asyncio.Event()
        self._full = False

    # -- the loop ------------------------------------------------------------------------

    def observe(
        self, credentials: PeerCredentials, start_time: int, spiffe_ids: Iterable[SpiffeId]
    ) -> None:
        """A caller matched entries with `spiffe_ids` (none: it no longer matches any).
        Cheap: reading its addresses is left to the worker."""
        caller = _Caller(credentials, start_time)
        ids = frozenset(str(i) for i in spiffe_ids)
        seen = self._tracked.get(caller)
        if seen is not None:
            if seen.spiffe_ids != ids:
                # Same process, same namespace: only what it is entitled to changed.
                if ids:
                    self._tracked[caller] = replace(seen, spiffe_ids=ids)
                else:
                    del self._tracked[caller]
                self._on_change()
            return
        if not ids:
            self._pending.pop(caller, None)
            return
        if caller not in self._pending and len(self._tracked) + len(self._pending) >= (
            self._max_tracked
        ):
            if not self._full:
                log.warning("workload_addresses_full", tracked=self._max_tracked)
                self._full = True
            return
        self._pending[caller] = ids
        self._wake.set()

    def by_identity(self) -> dict[str, frozenset[str]]:
        """SPIFFE ID -> the addresses its workloads on this node hold (IDs with none are
        left out)."""
        found: dict[str, set[str]] = defaultdict(set)
        for seen in self._tracked.values():
            for spiffe_id in seen.spiffe_ids:
                found[spiffe_id] |= seen.network.addresses
        return {k: frozenset(v) for k, v in found.items() if v}

    async def run(self) -> None:
        """Read new callers' addresses as they come, and every tracked one each interval."""
        next_refresh = time.monotonic() + self._refresh_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            refresh = time.monotonic() >= next_refresh
            known = list(self._tracked) if refresh else []
            found = await asyncio.to_thread(self._read, [*pending, *known])
            changed = False
            for caller, ids in pending.items():
                network = found.get(caller)
                if network is not None:
                    self._tracked[caller] = _Seen(network, ids)
                    changed = True
            for caller in known:
                seen = self._tracked.get(caller)
                if seen is None:
                    continue  # it matched nothing any more meanwhile
                network = found.get(caller)
                if network is None:
                    del self._tracked[caller]
                    changed = True
                elif network != seen.network:
                    self._tracked[caller] = _Seen(network, seen.spiffe_ids)
                    changed = True
            if refresh:
                next_refresh = time.monotonic() + self._refresh_interval
                if self._full and len(self._tracked) < self._max_tracked:
                    self._full = False
            if changed:
                self._on_change()

    # -- the worker thread ---------------------------------------------------------------

    def _read(self, callers: list[_Caller]) -> dict[_Caller, _Network]:
        """The network of each caller still running; a namespace's addresses are read once
        per pass."""
        namespaces: dict[Namespace, frozenset[str]] = {}
        found = {}
        for caller in callers:
            network = self._network_of(caller, namespaces)
            if network is not None:
                found[caller] = network
        return found

    def _network_of(
        self, caller: _Caller, namespaces: dict[Namespace, frozenset[str]]
    ) -> _Network | None:
        try:
            process = WorkloadProcess.open(caller.credentials, self._proc_root)
        except (WorkloadAttestationError, OSError):
            return None  # exited
        try:
            # Another process with a reused pid is not the caller. Past this check every
            # read goes through the open directory, which fails once the caller exits.
            if process.start_time != caller.start_time:
                return None
            namespace = _namespace(os.stat("ns/net", dir_fd=process.dir_fd))
            if namespace == self._own:
                return _Network(None, frozenset())
            addresses = namespaces.get(namespace)
            if addresses is None:
                addresses = ipv4_addresses(read_proc_file(process.dir_fd, "net/fib_trie"))
                if self._ipv6:
                    addresses |= ipv6_addresses(read_proc_file(process.dir_fd, "net/if_inet6"))
                namespaces[namespace] = addresses
            return _Network(namespace, addresses)
        except OSError:
            # It exited meanwhile, or its namespace is not ours to read.
            return None
        finally:
            process.close()
