"""A high-availability trustd on loopback: etcd, two PostgreSQL nodes under Patroni
(streaming replication, synchronous commit, automatic failover), Redis with a replica and
three Sentinels, HAProxy in front of three `trustd serve` replicas and of the PostgreSQL
primary (Patroni's REST check).

Every port is free on 127.0.0.1 and every file lives under one scratch directory; every
process is started here and stopped here (by its PID) on exit, on Ctrl-C and on SIGTERM.

Usage: python deploy/ha/topology.py [--dir DIR] [--keep]   (`make ha`)
Needs (Debian): patroni etcd-server redis-server redis-sentinel haproxy postgresql; root
(PostgreSQL and Patroni run as the `postgres` user).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Literal

import httpx
import psycopg

HERE = Path(__file__).resolve().parent
TRUSTD = Path(sys.executable).parent / "trustd"
SERVICE = "trustd"  # the Sentinel service (master name) and Patroni scope
DATABASE = "trustd"
SENTINEL_MASTER = ("sentinel", "get-master-addr-by-name", SERVICE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until *check* holds (bounded: raises after *timeout*)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


def postgres_bin_dir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not versions:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql")
    return versions[-1].parent


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                # Its own process group: Ctrl-C in the terminal reaches this script only,
                # which stops everything in order.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 (the fault suite's crash), the whole process group (Patroni's postgres
        children with it)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            assert self.process is not None
            self.process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            if self.name.startswith("patroni"):
                # Patroni stops its PostgreSQL itself (fast shutdown); a SIGTERM to the whole
                # group would make the postmaster wait for its clients (smart shutdown).
                os.kill(self.pid, signal.SIGTERM)
            else:
                os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Ports:
    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    pg: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    patroni: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    redis_master: int = field(default_factory=free_port)
    redis_replica: int = field(default_factory=free_port)
    sentinels: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    trustd: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    haproxy_trustd: int = field(default_factory=free_port)
    haproxy_pg: int = field(default_factory=free_port)
    haproxy_stats: int = field(default_factory=free_port)


class Topology:
    """Start with `start()`, stop with `stop()` (also a context manager)."""

    def __init__(
        self,
        root: Path,
        replicas: int = 3,
        rotation_interval: int = 2,
        database: Literal["haproxy", "multi-host"] = "multi-host",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        # TRUSTD_* settings every replica gets on top of the topology's own (a fault run's
        # short CA lifetimes), and per replica (index) the environment it alone gets.
        self.settings = dict(settings or {})
        self.replica_overrides: dict[int, dict[str, str]] = {}
        self.database = database
        self.ports = Ports()
        self.replica_count = replicas
        self.rotation_interval = rotation_interval
        self.procs: dict[str, Proc] = {}
        self.token = ""
        # The replicas share the key that encrypts CA keys, as they share the database.
        self.passphrase = secrets.token_urlsafe(24)

    # -- addresses -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports.haproxy_trustd}"

    @property
    def database_url(self) -> str:
        """Through HAProxy's primary-only front."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.ports.haproxy_pg}/{DATABASE}"

    @property
    def multi_host_database_url(self) -> str:
        """libpq's own failover: every node listed, the writable one chosen."""
        hosts = "&".join(f"host=127.0.0.1:{p}" for p in self.ports.pg)
        return (
            f"postgresql+psycopg://postgres@/{DATABASE}?{hosts}"
            "&target_session_attrs=read-write&connect_timeout=1"
        )

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports.sentinels)

    @property
    def bundle(self) -> Path:
        return self.root / "trustd-1" / "bundle.pem"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.bundle))

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Topology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_etcd()
        self._start_patroni()
        self._start_redis()
        self._start_haproxy()
        self._create_database()
        self._start_trustd()
        wait_for("HAProxy sees the trustd replicas", self._replicas_up, 30)

    def stop(self) -> None:
        # Front first, then the replicas, then what they depend on.
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        for i in range(2):
            self.kill_postmaster(i)

    # -- etcd and Patroni ----------------------------------------------------------------
    def _start_etcd(self) -> None:
        p = self.ports
        client, peer = f"http://127.0.0.1:{p.etcd_client}", f"http://127.0.0.1:{p.etcd_peer}"
        argv = ["etcd", "--name", "ha", "--data-dir", str(self.root / "etcd")]
        argv += ["--listen-client-urls", client, "--advertise-client-urls", client]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"ha={peer}", "--initial-cluster-state", "new"]
        self._run("etcd", argv)
        wait_for("etcd", lambda: httpx.get(f"{client}/health", timeout=1).is_success, 30)

    def patroni_config(self, index: int) -> Path:
        return self.root / f"pg{index + 1}.yml"

    def render_patroni(self, index: int) -> str:
        """Node `index`'s Patroni config: deploy/ha/patroni.yml with its placeholders
        filled (the example file and what runs are the same)."""
        p = self.ports
        name = f"pg{index + 1}"
        return Template((HERE / "patroni.yml").read_text()).substitute(
            name=name,
            rest_port=p.patroni[index],
            etcd_port=p.etcd_client,
            pg_port=p.pg[index],
            data_dir=self.root / name,
            bin_dir=postgres_bin_dir(),
            pgpass=self.root / f"{name}.pgpass",
            socket_dir=self.root,
        )

    def _start_patroni(self) -> None:
        for i in range(2):
            self.patroni_config(i).write_text(self.render_patroni(i))
        # Patroni and PostgreSQL refuse to run as root.
        shutil.chown(self.root, "postgres")
        for path in self.root.iterdir():
            if path.name.startswith("pg"):
                shutil.chown(path, "postgres")
        self.start_patroni(0)
        wait_for("the first PostgreSQL primary", lambda: self.patroni_role(0) == "primary", 90)
        self.start_patroni(1)
        wait_for("the PostgreSQL standby", lambda: self.patroni_role(1) == "replica", 90)

    def start_patroni(self, index: int) -> None:
        argv = ["runuser", "-u", "postgres", "--", "patroni", str(self.patroni_config(index))]
        self._run(f"patroni-{index + 1}", argv)

    def patroni_role(self, index: int) -> str | None:
        """ "primary", "replica" or None (down, starting) from Patroni's REST API."""
        base = f"http://127.0.0.1:{self.ports.patroni[index]}"
        for role in ("primary", "replica"):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/{role}", timeout=1).status_code == 200:
                    return role
        return None

    def primary_index(self) -> int | None:
        for i in range(2):
            if self.patroni_role(i) == "primary":
                return i
        return None

    def kill_postgres_primary(self) -> int:
        """kill -9 the primary's postmaster (Patroni stays and hands over); its index."""
        index = self.primary_index()
        if index is None or not self.kill_postmaster(index):
            raise RuntimeError("no PostgreSQL primary to kill")
        return index

    def kill_postmaster(self, index: int) -> bool:
        """kill -9 node *index*'s postmaster if it runs (a crash; also what `stop` does to one
        its Patroni left behind)."""
        pid_file = self.root / f"pg{index + 1}" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            # After a kill -9 the pid file is stale: check the PID is that postmaster.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return False
        if str(self.root / f"pg{index + 1}") not in cmdline:
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def _create_database(self) -> None:
        admin = f"postgresql://postgres@127.0.0.1:{self.ports.haproxy_pg}/postgres"

        def create() -> bool:
            with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                if not conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone():
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
            return True

        wait_for("the database through HAProxy", create, 30)

    # -- Redis and Sentinel --------------------------------------------------------------
    def _start_redis(self) -> None:
        p = self.ports
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._run(
            "redis-master", ["redis-server", "--port", str(p.redis_master), *common], dir_="rm"
        )
        self._run(
            "redis-replica",
            [
                "redis-server",
                "--port",
                str(p.redis_replica),
                *common,
                "--replicaof",
                "127.0.0.1",
                str(p.redis_master),
            ],
            dir_="rr",
        )
        for i, port in enumerate(p.sentinels):
            # Sentinel rewrites its file with what it learns: a fresh one per run.
            config = self.root / f"sentinel-{i + 1}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {p.redis_master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._run(f"sentinel-{i + 1}", ["redis-sentinel", str(config)])
        wait_for("Sentinel sees the Redis replica", self._sentinels_ready, 30)

    def _sentinels_ready(self) -> bool:
        for port in self.ports.sentinels:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "sentinel", "replicas", SERVICE],
                capture_output=True,
                text=True,
                timeout=2,
            ).stdout
            if str(self.ports.redis_replica) not in out:
                return False
        return True

    def redis_master_port(self) -> int:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.ports.sentinels[0]), *SENTINEL_MASTER],
            capture_output=True,
            text=True,
            timeout=2,
        ).stdout.split()
        return int(out[1])

    def redis_proc_on(self, port: int) -> str:
        return "redis-master" if port == self.ports.redis_master else "redis-replica"

    # -- HAProxy -------------------------------------------------------------------------
    def render_haproxy(self) -> str:
        """deploy/ha/haproxy.cfg with its placeholders filled (the example file and what
        runs are the same)."""
        p = self.ports
        trustd_servers = "\n".join(
            f"    server trustd-{i + 1} 127.0.0.1:{port} check check-ssl verify none"
            for i, port in enumerate(p.trustd[: self.replica_count])
        )
        pg_servers = "\n".join(
            f"    server pg{i + 1} 127.0.0.1:{port} check port {p.patroni[i]}"
            for i, port in enumerate(p.pg)
        )
        return Template((HERE / "haproxy.cfg").read_text()).substitute(
            stats_socket=self.root / "haproxy.sock",
            trustd_port=p.haproxy_trustd,
            pg_port=p.haproxy_pg,
            stats_port=p.haproxy_stats,
            trustd_servers=trustd_servers,
            pg_servers=pg_servers,
        )

    def _start_haproxy(self) -> None:
        path = self.root / "haproxy.cfg"
        path.write_text(self.render_haproxy())
        subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], check=True)
        self._run("haproxy", ["haproxy", "-db", "-f", str(path)])
        wait_for("HAProxy", lambda: (self.root / "haproxy.sock").exists(), 15)

    def haproxy_states(self) -> dict[str, str]:
        """server name -> UP/DOWN/..., from the stats socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.root / "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        states = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[1] not in ("FRONTEND", "BACKEND", "svname"):
                states[fields[1]] = fields[17]
        return states

    def _replicas_up(self) -> bool:
        states = self.haproxy_states()
        return all(states.get(f"trustd-{i + 1}") == "UP" for i in range(self.replica_count))

    # -- trustd --------------------------------------------------------------------------
    def replica_env(self, index: int) -> dict[str, str]:
        return {
            "TRUSTD_DATA_DIR": str(self.root / f"trustd-{index + 1}"),
            "TRUSTD_LISTEN": f"127.0.0.1:{self.ports.trustd[index]}",
            "TRUSTD_DATABASE_URL": (
                self.database_url if self.database == "haproxy" else self.multi_host_database_url
            ),
            "TRUSTD_REDIS_SENTINELS": self.sentinels,
            "TRUSTD_REDIS_SERVICE": SERVICE,
            "TRUSTD_KEY_PASSPHRASE": self.passphrase,
            "TRUSTD_PUBLIC_URL": self.url,
            "TRUSTD_ROTATION_INTERVAL": f"PT{self.rotation_interval}S",
            "TRUSTD_LOG_FORMAT": "json",
            **self.settings,
            **self.replica_overrides.get(index, {}),
        }

    def start_replica(self, index: int) -> None:
        name = f"trustd-{index + 1}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        env.update(self.replica_env(index))
        log = self.root / f"{name}.log"
        proc = Proc(name, [str(TRUSTD), "serve", "--log-level", "warning"], log)
        with log.open("ab") as out:
            proc.process = subprocess.Popen(
                proc.argv, stdout=subprocess.PIPE, stderr=out, env=env, start_new_session=True
            )
        self.procs[name] = proc
        stdout = proc.process.stdout
        assert stdout is not None
        # The banner: the bootstrap token (first replica only), then "Next ..."; keep
        # draining afterwards so the server never blocks on a full pipe.
        for raw in stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("trustd.") and not self.token:
                self.token = line
            if line.startswith("Next") or not proc.alive():
                break
        if not proc.alive():
            raise RuntimeError(f"{name} exited: see {log}")
        threading.Thread(target=stdout.read, daemon=True).start()
        port = self.ports.trustd[index]
        wait_for(
            name,
            lambda: (
                httpx.get(
                    f"https://127.0.0.1:{port}/readyz", verify=self.tls(), timeout=2
                ).is_success
            ),
            60,
        )

    def _start_trustd(self) -> None:
        # The first one migrates and creates the CA; then the others join it.
        for i in range(self.replica_count):
            self.start_replica(i)
        if not self.token:
            raise RuntimeError(f"trustd printed no bootstrap token: see {self.root}/trustd-1.log")

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, name: str, argv: list[str], dir_: str | None = None) -> Proc:
        cwd = self.root / dir_ if dir_ else None
        if cwd is not None:
            cwd.mkdir(exist_ok=True)
            argv = [*argv, "--dir", str(cwd)] if argv[0] == "redis-server" else argv
        proc = Proc(name, argv, self.root / f"{name}.log")
        proc.start()
        self.procs[name] = proc
        return proc

    def describe(self) -> str:
        p = self.ports
        return f"""
trustd HA topology on loopback (data and logs under {self.root})

  trustd (HAProxy, 3 replicas)  {self.url}     CA bundle {self.bundle}
  HAProxy stats                 http://127.0.0.1:{p.haproxy_stats}/
  PostgreSQL primary (HAProxy)  postgresql://postgres@127.0.0.1:{p.haproxy_pg}/{DATABASE}
  PostgreSQL node pg1           127.0.0.1:{p.pg[0]} (Patroni REST :{p.patroni[0]})
  PostgreSQL node pg2           127.0.0.1:{p.pg[1]} (Patroni REST :{p.patroni[1]})
  Redis Sentinels               {self.sentinels} (service {SERVICE})
  etcd                          http://127.0.0.1:{p.etcd_client}
  admin token                   {self.token}

What to try (another terminal):
  curl --cacert {self.bundle} {self.url}/readyz
  export TRUSTD_SERVER={self.url} TRUSTD_CA_BUNDLE={self.bundle}
  export TRUSTD_ADMIN_TOKEN={self.token}
  trustd entry list                                  # any replica answers, through HAProxy
  patronictl -c {self.patroni_config(0)} list      # who is the primary
  redis-cli -p {p.sentinels[0]} sentinel get-master-addr-by-name {SERVICE}
  kill -9 $(head -1 {self.root}/pg1/postmaster.pid)   # PostgreSQL failover (then `list` again)
  redis-cli -p {p.redis_master} debug segfault         # Redis failover (Sentinel promotes)
  make ha-test                                         # the fault suite, on its own topology
Ctrl-C stops every process.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--database",
        choices=("haproxy", "multi-host"),
        default="multi-host",
        help="how trustd reaches the PostgreSQL primary: libpq's own multi-host URL "
        "(target_session_attrs=read-write, the default: the shorter window in make ha-test) "
        "or HAProxy's front",
    )
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="trustd-ha-"))
    # SIGTERM stops everything as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Topology(root, database=args.database) as topology:
            print(topology.describe(), flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
