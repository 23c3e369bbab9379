"""A private Redis Cluster on loopback: `masters` redis-server processes in cluster mode
(each a PrivateServer), slots split evenly, no replicas. For tests and benchmarks of the
cluster mode; Debian's redis-server runs it.

Cluster nodes talk on a bus port = port + 10000, so ports are picked below 55535 with both
free (a free port the OS hands out may be above that)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from uuid import uuid4

import redis
from redis.crc import key_slot

from exospherehost.testing.server import HOST, PrivateServer, ServerInfo

SLOTS = 16384
_BUS_OFFSET = 10000


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """`count` ports below 55535 whose bus ports (+10000) are free too."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 45000)
        taken = {q for p in ports for q in (p, p + _BUS_OFFSET)}
        if {port, port + _BUS_OFFSET} & taken:
            continue
        if _free(port) and _free(port + _BUS_OFFSET):
            ports.append(port)
    return ports


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Contiguous, even slot ranges, one per master (inclusive ends)."""
    bounds = [i * SLOTS // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def namespace_on(master: int, masters: int = 3, prefix: str = "c") -> str:
    """A fresh namespace whose `{ns}` slot is served by master `master` (0-based, in the
    order PrivateCluster assigned the slot ranges of `masters`)."""
    first, last = slot_ranges(masters)[master]
    while True:
        ns = f"{prefix}{uuid4().hex[:10]}"
        if first <= key_slot(ns.encode()) <= last:
            return ns


@dataclass(frozen=True, slots=True)
class ClusterTLS:
    """TLS for a PrivateCluster: every node gets a TLS port beside its plain one, and the
    cluster bus runs over TLS too (tls-cluster yes). Files are PEM paths."""

    cert_file: str
    key_file: str
    ca_file: str
    auth_clients: str = "yes"  # yes (mutual TLS) / optional / no

    def args(self, tls_port: int) -> list[str]:
        return [
            "--tls-port", str(tls_port),
            "--tls-cluster", "yes",
            "--tls-cert-file", self.cert_file,
            "--tls-key-file", self.key_file,
            "--tls-ca-cert-file", self.ca_file,
            "--tls-auth-clients", self.auth_clients,
        ]  # fmt: skip


class PrivateCluster:
    def __init__(
        self, masters: int = 3, node_timeout_ms: int = 2000, tls: ClusterTLS | None = None
    ) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, not {masters}")
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.tls = tls
        self.tls_ports: list[int] = []  # with `tls`: each node's TLS port, as `servers`
        self.servers: list[PrivateServer] = []

    @property
    def infos(self) -> list[ServerInfo]:
        infos = [s.info for s in self.servers]
        if not infos or any(i is None for i in infos):
            raise RuntimeError("the cluster is not running")
        return [i for i in infos if i is not None]

    @property
    def url(self) -> str:
        """Any one node's URL: a cluster client discovers the rest."""
        return self.infos[0].url

    def tls_url(self, node: int = 0, **params: str) -> str:
        """`rediss://` URL of a node's TLS port (with `tls`), its query string `params`
        (e.g. ssl_ca_certs=...). The plain `url` and `infos` stay for administration: a
        node announces the TLS ports to TLS clients and the plain ones to the others."""
        if self.tls is None or not self.tls_ports:
            raise RuntimeError("this cluster was started without TLS")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"rediss://{HOST}:{self.tls_ports[node]}" + (f"?{query}" if query else "")

    def start(self, timeout: float = 30.0) -> list[ServerInfo]:
        options = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
        ]  # fmt: skip
        try:
            ports = cluster_ports(self.masters * (2 if self.tls else 1))
            plain, self.tls_ports = ports[: self.masters], ports[self.masters :]
            for n, port in enumerate(plain):
                extra = self.tls.args(self.tls_ports[n]) if self.tls else []
                server = PrivateServer(port=port, extra_args=options + extra)
                self.servers.append(server)
                server.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self.infos

    def _form(self, timeout: float) -> None:
        ports = [i.port for i in self.infos]
        clients = [redis.Redis(host=HOST, port=p) for p in ports]
        try:
            for client, (first, last) in zip(clients, slot_ranges(self.masters), strict=True):
                client.cluster("ADDSLOTSRANGE", first, last)
            # With tls-cluster the bus port is the TLS port + 10000.
            for port in (self.tls_ports if self.tls else ports)[1:]:
                clients[0].cluster("MEET", HOST, port)
            deadline = time.monotonic() + timeout
            while not all(self._formed(c) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster on ports {ports} not formed within {timeout}s")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _formed(self, client: redis.Redis) -> bool:
        info = client.cluster("INFO")
        state = info.get("cluster_state") if isinstance(info, dict) else None
        known = int(info.get("cluster_known_nodes", 0)) if isinstance(info, dict) else 0
        return state == "ok" and known == self.masters

    def owner(self, slot: int) -> int:
        """Index (in `servers`) of the master serving `slot`, as the masters agree."""
        by_port = {i.port: n for n, i in enumerate(self.infos)}
        with redis.Redis(host=HOST, port=self.infos[0].port) as client:
            for first, last, primary, *_ in client.cluster("SLOTS"):
                if int(first) <= slot <= int(last):
                    return by_port[int(primary[1])]
        raise RuntimeError(f"slot {slot} is served by no master")

    def migrate_slot(
        self,
        slot: int,
        to: int,
        batch: int = 10,
        between: Callable[[], None] | None = None,
        timeout_ms: int = 5000,
        first: Sequence[str] = (),
    ) -> int:
        """Move `slot` to master `to` as redis-cli --cluster reshard does, while clients
        keep using it: the target IMPORTING, the source MIGRATING, the keys moved `batch` at
        a time with MIGRATE (calling `between` after each batch; the keys `first` before
        the others), then every master told the new owner (SETSLOT NODE). Returns how many
        keys moved."""
        source = self.owner(slot)
        if source == to:
            raise ValueError(f"slot {slot} is on master {to} already")
        src, dst = (redis.Redis(host=HOST, port=self.infos[i].port) for i in (source, to))
        others = [
            redis.Redis(host=HOST, port=i.port)
            for n, i in enumerate(self.infos)
            if n not in (source, to)
        ]
        try:
            src_id = _text(src.cluster("MYID"))
            dst_id = _text(dst.cluster("MYID"))
            dst.cluster("SETSLOT", slot, "IMPORTING", src_id)
            src.cluster("SETSLOT", slot, "MIGRATING", dst_id)
            moved, failed = 0, None
            early = [list(first[i : i + batch]) for i in range(0, len(first), batch)]
            while keys := (early.pop(0) if early else src.cluster("GETKEYSINSLOT", slot, batch)):
                src.migrate(HOST, self.infos[to].port, keys, 0, timeout_ms)
                moved += len(keys)
                if between is not None and failed is None:
                    try:
                        between()
                    except Exception as exc:  # finish the move (the slot must not stay
                        failed = exc  # half-migrated), then raise it
            # The target first (it then serves the slot for good), as redis-cli does.
            for client in (dst, src, *others):
                client.cluster("SETSLOT", slot, "NODE", dst_id)
            if failed is not None:
                raise failed
            return moved
        finally:
            for client in (src, dst, *others):
                client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []
        self.tls_ports = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
