"""The eBPF datapath: load `bpf/enforce.c`, pin its maps under the pin directory
(`/sys/fs/bpf/trustd/` by default), attach it to tc ingress and egress on the configured
interfaces (IPv4 and IPv6 alike), and write each verdict revision atomically:
double-buffered by generation, each generation brought to the new revision by the
difference from the one it holds."""

from __future__ import annotations

import ctypes
import ipaddress
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.errors import EnforcementError
from trustd.domain.flows import Direction, Reason, Verdict
from trustd.domain.nodes import Unmanaged

log = structlog.get_logger("trustd.agent.ebpf")
MAPS = (
    "trustd_config",
    "trustd_ipcache",
    "trustd_policy",
    "trustd_revoked",
    "trustd_counters",
    "trustd_allowed",
    "trustd_flows",
    "trustd_events",
    "trustd_seen",
    "trustd_events_lost",
)
# Config.flags, as bpf/enforce.c names them.
FLAG_UNMANAGED_DENY = 1
FLAG_CUT_ESTABLISHED = 2
FLAG_FLOW_EVENTS = 4
PROGRAM = "trustd_ingress"
# What the workloads send to unmanaged destinations (bpf/enforce.c).
EGRESS_PROGRAM = "trustd_egress"
# Counter slots, in the order of the enum in bpf/enforce.c.
COUNTERS = ("allowed", "denied", "dropped", "revoked", "stale", "unmanaged", "established")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/trustd")
SWITCH_GRACE = 0.005


class Mode(StrEnum):
    ENFORCE = "enforce"
    # Count what would be denied, drop nothing.
    AUDIT = "audit"


class Config(ctypes.Structure):
    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("revision", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("valid_until_ns", ctypes.c_uint64),
    ]


class FlowEvent(ctypes.Structure):
    """`struct flow_event` of bpf/enforce.c: one connection verdict on the ring buffer."""

    _fields_ = [
        ("ktime", ctypes.c_uint64),  # bpf_ktime_get_ns: CLOCK_MONOTONIC
        ("saddr", ctypes.c_ubyte * 16),
        ("daddr", ctypes.c_ubyte * 16),
        ("src", ctypes.c_uint32),
        ("dst", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


# The event's enums, in the order of bpf/enforce.c's V_*, R_* and D_*, and its protocols.
EVENT_VERDICTS = (Verdict.ALLOWED, Verdict.DENIED, Verdict.AUDIT)
EVENT_REASONS = (
    Reason.POLICY,
    Reason.REVOKED,
    Reason.STALE,
    Reason.UNMANAGED,
    Reason.AUDIT_WOULD_DENY,
)
EVENT_DIRECTIONS = (Direction.EGRESS, Direction.INGRESS)
EVENT_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}


class AllowedKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),  # 32 (family) + the address prefix length
        ("family", ctypes.c_uint32),
        ("addr", ctypes.c_ubyte * 16),
    ]


def lpm_address(prefix: str) -> tuple[int, int, list[int]]:
    """An IPv4 or IPv6 prefix as the LPM keys of bpf/enforce.c hold it: (family, prefix
    length, 16 address bytes, an IPv4 address in the first 4)."""
    network = ipaddress.ip_network(prefix)
    packed = network.network_address.packed
    return network.version, network.prefixlen, list(packed.ljust(16, b"\0"))


def address_of(family: int, addr: bytes) -> str:
    """The address an LPM key holds, as text (the inverse of `lpm_address`)."""
    if family == 4:
        return str(ipaddress.IPv4Address(bytes(addr[:4])))
    return str(ipaddress.IPv6Address(bytes(addr)))


@dataclass(frozen=True)
class Scope:
    """A node's enforcement scope for unmanaged destinations."""

    unmanaged: Unmanaged = Unmanaged.ALLOW
    always_allowed: frozenset[str] = frozenset()


class IpcacheKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),  # 64 (generation, family) + the prefix length
        ("gen", ctypes.c_uint32),
        ("family", ctypes.c_uint32),
        ("addr", ctypes.c_ubyte * 16),
    ]

    @property
    def prefix(self) -> str:
        return f"{address_of(self.family, bytes(self.addr))}/{self.prefixlen - 64}"


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("dst", ctypes.c_uint32),
        ("src", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class RevokedKey(ctypes.Structure):
    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class Interface:
    """`ifname`, or `netns/ifname` for an interface inside a named network namespace."""

    netns: str | None
    ifname: str

    @classmethod
    def parse(cls, spec: str) -> Interface:
        netns, _, ifname = spec.rpartition("/")
        if not ifname:
            raise EnforcementError(f"interface {spec!r}: expected IFNAME or NETNS/IFNAME")
        return cls(netns or None, ifname)


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return sum(
        int(b) - int(a) + 1 if "-" in part else 1
        for part in text.split(",")
        for a, _, b in [part.partition("-")]
    )


class BpfEnforcer:
    """Owns the loaded program and its maps for one agent."""

    def __init__(
        self,
        object_path: Path,
        interfaces: list[Interface],
        mode: Mode = Mode.ENFORCE,
        pin_dir: Path = DEFAULT_PIN_DIR,
        staleness: float | None = None,
        flow_events: bool = True,
    ) -> None:
        self.object_path = object_path
        # Whether the program reports connection verdicts on its ring buffer.
        self.flow_events = flow_events
        self.interfaces = interfaces
        self.mode = mode
        self.pin_dir = pin_dir
        self.staleness = staleness
        self._obj: libbpf.BpfObject | None = None
        self._cpus = _possible_cpus()
        # The table each generation holds (None: unknown, cleared before it is written).
        self._held: list[VerdictTable | None] = [None, None]
        self._switched_at = 0.0
        # The scope last written (None: unknown, rewritten whole).
        self._scope: Scope | None = None
        # `apply` runs on a worker thread while `refresh` runs on the event loop: both
        # rewrite the config element, so neither may undo the other's write.
        self._config_lock = threading.Lock()
        self._apply_lock = threading.Lock()

    def start(self) -> None:
        """Load (reusing pinned maps: the last state stays in force), then attach.

        Raises:
            EnforcementError: bpffs, the verifier, or an interface refused.
        """
        libbpf.ensure_bpffs()
        self._obj = libbpf.BpfObject(self.object_path, self.pin_dir, MAPS, PROGRAM, EGRESS_PROGRAM)
        # Pinned maps keep what an earlier run wrote, which this one does not know.
        self._held = [None, None]
        self._scope = None
        config = self._config()
        config.mode = 1 if self.mode is Mode.ENFORCE else 0
        config.flags &= ~FLAG_FLOW_EVENTS
        if self.flow_events:
            config.flags |= FLAG_FLOW_EVENTS
        # The staleness deadline is left as the last run set it: only an answer from
        # trustd moves it (`refresh`), so restarting a cut-off agent does not extend it.
        self._write_config(config)
        for interface in self.interfaces:
            self._obj.attach(interface.netns, interface.ifname)
            self._obj.attach(interface.netns, interface.ifname, program=EGRESS_PROGRAM, egress=True)
        log.info(
            "ebpf_attached",
            interfaces=[f"{i.netns or ''}/{i.ifname}" for i in self.interfaces],
            mode=str(self.mode),
            revision=config.revision,
        )

    def stop(self, *, detach: bool = False) -> None:
        """Release the object. The filters and pinned maps stay (fail-static) unless
        `detach`, which also removes the pins."""
        if self._obj is None:
            return
        if detach:
            for interface in self.interfaces:
                self._obj.detach(interface.netns, interface.ifname)
                self._obj.detach(interface.netns, interface.ifname, egress=True)
            for name in MAPS:
                (self.pin_dir / name).unlink(missing_ok=True)
        self._obj.close()
        self._obj = None

    @property
    def _fds(self) -> dict[str, int]:
        if self._obj is None:
            raise EnforcementError("the eBPF program is not loaded")
        return self._obj.fds

    @property
    def program_fd(self) -> int:
        """The loaded program (to run it on a packet: `libbpf.run_on_packet`)."""
        if self._obj is None:
            raise EnforcementError("the eBPF program is not loaded")
        return self._obj.prog_fd

    def set_flow_events(self, on: bool) -> None:
        """Turn the program's flow events on or off (one config write, in force for the
        next packet)."""
        with self._config_lock:
            config = self._config()
            config.flags &= ~FLAG_FLOW_EVENTS
            if on:
                config.flags |= FLAG_FLOW_EVENTS
            self._write_config(config)
        self.flow_events = on

    def events(self) -> libbpf.RingBuffer:
        """A reader of the program's flow events (`FlowEvent` records); close it before
        `stop`.

        Raises:
            EnforcementError: the program is not loaded.
        """
        return libbpf.RingBuffer(self._fds["trustd_events"])

    def events_lost(self) -> int:
        """Flow events the ring buffer had no room for, since the map was pinned."""
        values = (ctypes.c_uint64 * self._cpus)()
        libbpf.lookup(self._fds["trustd_events_lost"], ctypes.c_uint32(0), values)
        return int(sum(values))

    def _config(self) -> Config:
        config = Config()
        libbpf.lookup(self._fds["trustd_config"], ctypes.c_uint32(0), config)
        return config

    def _write_config(self, config: Config) -> None:
        libbpf.update(self._fds["trustd_config"], ctypes.c_uint32(0), config)

    @property
    def revision(self) -> int:
        return int(self._config().revision)

    def refresh(self) -> None:
        """trustd answered: move the staleness deadline forward."""
        if self.staleness is None:
            return
        with self._config_lock:
            config = self._config()
            config.valid_until_ns = time.monotonic_ns() + int(self.staleness * 1e9)
            self._write_config(config)

    def set_scope(self, scope: Scope) -> None:
        """Write the node's scope: the always-allowed prefixes first (added before any is
        removed), then the unmanaged setting, so no packet that should pass is dropped on
        the way. Blocks: call it off the event loop.

        Raises:
            EnforcementError: a prefix was refused (the map holds 256).
        """
        with self._apply_lock:
            fd = self._fds["trustd_allowed"]
            held = self._scope
            if held is None:
                for key in list(libbpf.keys(fd, AllowedKey)):
                    libbpf.delete(fd, key)
                held = Scope(Unmanaged.ALLOW, frozenset())

            def key_of(prefix: str) -> AllowedKey:
                family, length, addr = lpm_address(prefix)
                key = AllowedKey(32 + length, family)
                key.addr[:] = addr
                return key

            self._scope = None
            for prefix in scope.always_allowed - held.always_allowed:
                libbpf.update(fd, key_of(prefix), ctypes.c_uint32(1))
            with self._config_lock:
                config = self._config()
                config.flags &= ~FLAG_UNMANAGED_DENY
                if scope.unmanaged is Unmanaged.DENY:
                    config.flags |= FLAG_UNMANAGED_DENY
                self._write_config(config)
            for prefix in held.always_allowed - scope.always_allowed:
                libbpf.delete(fd, key_of(prefix))
            self._scope = scope
            log.info(
                "ebpf_scope",
                unmanaged=str(scope.unmanaged),
                always_allowed=sorted(scope.always_allowed),
            )

    def apply(self, table: VerdictTable) -> None:
        """Bring the idle generation to `table`, switch to it; the generation just left
        keeps the previous revision and catches up on the next apply.

        Each generation remembers the table it holds, so only the difference is written
        (a delta of a few entries costs a few map writes, not the whole state). A
        generation whose contents are unknown (pinned by an earlier run, or half written
        by a refused apply) is cleared and written whole. Blocks for up to SWITCH_GRACE:
        call it off the event loop.

        Raises:
            EnforcementError: a map is full or refused an entry; the active generation
                (the last good state) is untouched.
        """
        with self._apply_lock:
            fds = self._fds
            with self._config_lock:
                gen = self._config().gen ^ 1
            # The idle generation was the active one until the last switch. A packet that
            # read the generation just before the switch may still be looking entries up
            # in it, and a destination missing from the IP cache reads as unmanaged
            # (passed). tc programs run to completion in softirq context within
            # microseconds: writing only after a grace period, as an RCU grace period
            # would, never changes an entry under one.
            pause = self._switched_at + SWITCH_GRACE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            held = self._held[gen]
            # Until the writes below all succeed the generation is half written: unknown.
            self._held[gen] = None
            if held is None:
                self._clear(gen)
                held = VerdictTable()
            self._write(fds, gen, held, table)
            # The switch: one array-element write, seen whole by every later packet (with
            # whether a deny cuts established connections, which comes with the revision).
            with self._config_lock:
                config = self._config()
                config.gen = gen
                config.revision = table.revision
                config.flags &= ~FLAG_CUT_ESTABLISHED
                if table.cut_established:
                    config.flags |= FLAG_CUT_ESTABLISHED
                self._write_config(config)
            self._switched_at = time.monotonic()
            self._held[gen] = table

    @staticmethod
    def _write(fds: dict[str, int], gen: int, held: VerdictTable, table: VerdictTable) -> None:
        """Turn generation `gen`, which holds `held`, into `table`."""
        ipcache, policy, revoked = (
            fds["trustd_ipcache"],
            fds["trustd_policy"],
            fds["trustd_revoked"],
        )

        def ipcache_key(prefix: str) -> IpcacheKey:
            family, length, addr = lpm_address(prefix)
            key = IpcacheKey(64 + length, gen, family)
            key.addr[:] = addr
            return key

        for prefix in held.ipcache.keys() - table.ipcache.keys():
            libbpf.delete(ipcache, ipcache_key(prefix))
        for prefix, number in table.ipcache.items():
            if held.ipcache.get(prefix) != number:
                libbpf.update(ipcache, ipcache_key(prefix), ctypes.c_uint32(number))
        for k in held.policy.keys() - table.policy.keys():
            libbpf.delete(policy, PolicyKey(gen, k.dst, k.src, k.port, k.proto, 0))
        for k, allowed in table.policy.items():
            if held.policy.get(k) != allowed:
                pkey = PolicyKey(gen, k.dst, k.src, k.port, k.proto, 0)
                libbpf.update(policy, pkey, ctypes.c_uint32(int(allowed)))
        for number in held.revoked - table.revoked:
            libbpf.delete(revoked, RevokedKey(gen, number))
        for number in table.revoked - held.revoked:
            libbpf.update(revoked, RevokedKey(gen, number), ctypes.c_uint32(1))

    def _clear(self, gen: int) -> None:
        fds = self._fds
        for name, key_type in (
            ("trustd_ipcache", IpcacheKey),
            ("trustd_policy", PolicyKey),
            ("trustd_revoked", RevokedKey),
        ):
            stale = [k for k in libbpf.keys(fds[name], key_type) if k.gen == gen]
            for key in stale:
                libbpf.delete(fds[name], key)

    def counters(self) -> dict[str, int]:
        """Per-verdict packet counts, summed over CPUs."""
        fd = self._fds["trustd_counters"]
        out = {}
        for slot, name in enumerate(COUNTERS):
            values = (ctypes.c_uint64 * self._cpus)()
            libbpf.lookup(fd, ctypes.c_uint32(slot), values)
            out[name] = int(sum(values))
        return out
