"""A real Redis Cluster for the tests: 3 masters and 3 replicas on private ports, made with
``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``, nothing saved."""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

MASTERS = 3
# Short, so a killed master's replica takes over within seconds in a failover test.
NODE_TIMEOUT_MS = 1500


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (.ci/run installs it with apt)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
                *("--cluster-config-file", str(self.workdir / "nodes.conf")),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
                # Replicas sync at once, not after the default 5 s wait for more of them.
                *("--repl-diskless-sync-delay", "0"),
                *("--logfile", str(self.workdir / "redis.log")),
            ]
        )
        _wait_until(lambda: _ping(self.port), f"cluster node {self.address} did not start")

    def pause(self) -> None:
        """SIGSTOP: a node that hangs, its connections open and silent."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGKILL: a crashed master, as a failover test wants it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class RedisCluster:
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node: the client finds the rest."""
        return f"redis://{self.nodes[0].address}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{node.address}" for node in self.nodes]

    def masters(self) -> list[ClusterNode]:
        """The nodes that are masters now (a failover changes which)."""
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_connect_timeout=0.5)
            try:
                lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
            finally:
                client.close()
            ports = []
            for line in lines:
                parts = line.split()
                if "master" in parts[2] and "fail" not in parts[2]:
                    ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
            return [by_port[p] for p in sorted(ports) if p in by_port]
        raise RuntimeError("no cluster node is running")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """The node that replicates ``master`` now."""
        for node in self.nodes:
            if node is master or node.proc is None or node.proc.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_connect_timeout=0.5)
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return node
        raise RuntimeError(f"no replica of {master.address}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def free_ports(count: int) -> list[int]:
    """Distinct free ports: each held until all are found, so none comes up twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_cluster(workdir: Path, ports: list[int] | None = None) -> RedisCluster:
    """Six nodes on ``ports`` (twelve: a client and a bus port each; free ones by default),
    joined into a cluster whose every slot is served; raises if it does not settle in 30 s."""
    ports = ports or free_ports(MASTERS * 2 * 2)
    cluster = RedisCluster(
        [
            ClusterNode(ports[2 * i], ports[2 * i + 1], workdir / f"node-{i}")
            for i in range(MASTERS * 2)
        ]
    )
    try:
        for node in cluster.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (.ci/run installs redis-tools with apt)")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(node.address for node in cluster.nodes),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in cluster.nodes:
            _wait_until(
                functools.partial(_cluster_ok, node.port),
                f"cluster node {node.address} never saw the whole cluster",
                seconds=30,
            )
        _wait_until(
            lambda: len(cluster.masters()) == MASTERS,
            "the replicas never settled",
            seconds=30,
        )
        # A replica that has not synced once cannot take over: a failover test would wait
        # forever for a promotion that never comes.
        for node in cluster.nodes:
            if node not in cluster.masters():
                _wait_until(
                    functools.partial(_synced, node.port),
                    f"replica {node.address} never synced with its master",
                    seconds=30,
                )
        # ... and a master counts a replica for WAIT only once it is online on its side too
        # (after a diskless sync: after the replica's first acknowledgement, up to 1 s on).
        for node in cluster.masters():
            _wait_until(
                functools.partial(_replica_online, node.port),
                f"master {node.address} never saw its replica online",
                seconds=30,
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _ping(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _cluster_ok(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        info = client.execute_command("CLUSTER", "INFO").decode()
    except redis.RedisError:
        return False
    finally:
        client.close()
    return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info


def _replication(port: int) -> dict[str, Any]:
    """INFO replication of a node ({} while it does not answer)."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        return dict(client.info("replication"))
    except redis.RedisError:
        return {}
    finally:
        client.close()


def _synced(port: int) -> bool:
    return bool(_replication(port).get("master_link_status") == "up")


def _replica_online(port: int) -> bool:
    replica = _replication(port).get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def _wait_until(ready: Callable[[], bool], message: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)
