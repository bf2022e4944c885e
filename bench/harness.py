"""What every benchmark script shares: the processes it starts, nginx, Redis, ports, the report.

Run as scripts (`python bench/run.py`), the scripts have bench/ on sys.path and import this.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCH_PATH = "/bench/path"
EXPECTED_BODY = b'{"ok":true}'
# Bounds on everything that waits, so a wedged process fails the run instead of hanging it.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LOAD_GRACE = 30.0
# Files, pipes and listening sockets a process holds besides its connections.
OPEN_FILES_SLACK = 128


class BenchError(Exception):
    """The benchmark cannot go on; the message says which step failed and why."""


# ---------------------------------------------------------------------------------------------
# Processes: every one started here is tracked, so all of them are stopped on any exit path.


class Processes:
    """Started child processes; each in its own session so a Ctrl-C reaches only the harness,
    which then stops them in order (terminate, then kill after STOP_TIMEOUT)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._running[:]):
            self.stop(proc)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        stdout: Path | None = None,
        *,
        stdout_to_stderr: bool = False,
    ) -> Child:
        """Start argv; stdout goes to the file given, to the stderr log, or nowhere."""
        log = self.workdir / f"{_slug(name)}.stderr"
        with contextlib.ExitStack() as files:
            err = files.enter_context(log.open("wb"))
            out: IO[bytes] | int = subprocess.DEVNULL
            if stdout is not None:
                out = files.enter_context(stdout.open("wb"))
            elif stdout_to_stderr:
                out = err
            proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self._running.append(proc)
        return Child(name, proc, log)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._running:
            self._running.remove(proc)
        if proc.poll() is not None:
            return
        # The child leads its own process group: signal the group so any helper it forked
        # (none today, but a supervisor or workers would) goes too.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass(frozen=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stderr: Path

    def describe_exit(self) -> str:
        tail = self.stderr.read_text(errors="replace").strip().splitlines()[-15:]
        detail = "\n    ".join(tail) or "(nothing on stderr)"
        return f"{self.name} exited with status {self.proc.returncode}:\n    {detail}"


def cpu_seconds(child: Child | None) -> float | None:
    """User plus system CPU time a child process has used so far (Linux: /proc), or None.

    Only the process itself: nginx's workers are its children, so nginx has no figure.
    """
    if child is None or child.name.startswith("nginx"):
        return None
    try:
        stat = Path(f"/proc/{child.proc.pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def ensure_open_files(needed: int) -> None:
    """Raise this process's open-files limit to its hard limit (the children inherit it), and
    fail clearly if even that is below what the run needs: else connections would fail midway
    with EMFILE, and the table would show errors instead of saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    elif hard == resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY:
        soft = max(soft, needed + OPEN_FILES_SLACK)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed + OPEN_FILES_SLACK:
        raise BenchError(
            f"the open-files limit is {soft}, below the {needed + OPEN_FILES_SLACK} this run"
            " needs; raise it (ulimit -n) or use fewer --connections"
        )


def free_port() -> int:
    # The kernel picks an unused port; the tiny window before the child binds it is acceptable
    # on loopback, and a collision shows up as a start failure, not as wrong numbers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# /proc/net/tcp states that are neither LISTEN (0A) nor TIME_WAIT (06): a connection the server
# has not finished closing.
_LISTEN_OR_TIME_WAIT = ("0A", "06")


def _open_connections(port: int) -> int | None:
    """Connections on the server side of ``port`` not yet closed, or None off Linux."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rpartition(":")[2], 16) == port and state not in _LISTEN_OR_TIME_WAIT:
                count += 1
    return count


def wait_until_closed(port: int, timeout: float = 10.0) -> None:
    """Wait until the server on ``port`` has closed the last load's connections.

    A load generator that starts at once reuses the previous run's client ports (the kernel
    may, on loopback), and a SYN that meets the old connection while the server is still
    closing it is retried a second later: a busy server then shows 1 s and 3 s latencies that
    are the kernel's, not its own (nginx, closing at once, never does).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _open_connections(port)
        if left is None:
            time.sleep(1.0)  # no way to look: a second is what it took on Linux
            return
        if left == 0:
            return
        time.sleep(0.05)


def wait_for_port(child: Child, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(child.describe_exit())
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not accept connections on port {port} in {timeout:g}s")


def _get(name: str, port: int, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", BENCH_PATH, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    except OSError as exc:
        raise BenchError(f"{name}: probe request failed: {exc}") from None
    finally:
        conn.close()


def probe(name: str, port: int, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One request before loading: a contender that answers 404 or 502 would post fine rps."""
    response, body = _get(name, port, headers or {})
    if response.status != 200 or body != EXPECTED_BODY:
        raise BenchError(f"{name}: probe got {response.status} {body[:200]!r}, not 200 OK")
    return response


# ---------------------------------------------------------------------------------------------
# nginx: the fast upstream, and the reference reverse proxy.


def nginx_version() -> str:
    out = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    m = re.search(r"nginx/([\d.]+)", out)
    return m.group(1) if m else "unknown"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def nginx_conf(prefix: Path, http_body: str) -> str:
    # Every path nginx writes is inside the prefix: no root needed, nothing left behind.
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # Never retire a keep-alive connection mid-run: reconnects would be noise in every number.
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{http_body}
}}
"""


def upstream_server(port: int) -> str:
    return f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{EXPECTED_BODY.decode()}';
        }}
    }}"""


def proxy_server(port: int, upstream_port: int, extra: Sequence[str] = ()) -> str:
    """nginx as a keep-alive reverse proxy; extra: more directives for its location."""
    more = "".join(f"\n            {directive}" for directive in extra)
    return f"""\
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        # Idle connections kept per worker: above the most concurrent connections a run uses,
        # so at 256 nginx reuses its connections instead of opening one per request.
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{more}
        }}
    }}"""


def start_nginx(procs: Processes, name: str, port: int, http_body: str) -> Child:
    prefix = procs.workdir / _slug(name)
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, http_body))
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(conf)]
    # -e (1.19.5+) keeps nginx from opening its compiled-in error log before reading the config.
    if _version_tuple(nginx_version()) >= (1, 19, 5):
        argv += ["-e", str(prefix / "error.log")]
    child = procs.start(name, argv)
    wait_for_port(child, port)
    return child


# ---------------------------------------------------------------------------------------------
# Redis: the shared store of the gateway contenders that need one, always our own.


def _redis_info(port: int) -> str:
    """INFO server, over a bare socket (RESP inline command; the reply is one bulk string)."""
    with socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.sendall(b"INFO server\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            return ""
        size = int(head[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return rest[:size].decode(errors="replace")


def start_redis(
    procs: Processes, name: str = "redis", *, cluster: bool = False
) -> tuple[str, Child]:
    """A redis-server of our own on a free port, in the temp dir, persisting nothing (with
    cluster: a node of a Redis Cluster yet to be made, see start_redis_cluster)."""
    port = free_port()
    workdir = procs.workdir / name
    workdir.mkdir(exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf")]
        # Its own bus port: the default, 10000 above the client port, may not exist.
        argv += ["--cluster-port", str(free_port())]
    child = procs.start(name, argv, stdout_to_stderr=True)
    wait_for_port(child, port)
    # Whoever answers on the port must be the process just started, never another Redis.
    try:
        info = _redis_info(port)
    except (OSError, ValueError) as exc:
        raise BenchError(f"redis: INFO failed on port {port}: {exc}") from None
    if f"process_id:{child.proc.pid}\r\n" not in info:
        raise BenchError(f"redis: the server on port {port} is not the one the harness started")
    return f"redis://127.0.0.1:{port}/0", child


def start_redis_cluster(procs: Processes, masters: int = 3) -> tuple[list[str], list[Child]]:
    """A Redis Cluster of our own: ``masters`` nodes, no replicas (the data path does not
    wait for them), every slot served; the nodes' URLs and processes."""
    started = [start_redis(procs, f"redis-node-{i}", cluster=True) for i in range(masters)]
    urls = [url.removesuffix("/0") for url, _ in started]
    addresses = [url.removeprefix("redis://") for url in urls]
    create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"]
    made = subprocess.run(create, capture_output=True, timeout=60, check=False)
    if made.returncode != 0:
        raise BenchError(f"redis-cli --cluster create failed: {made.stderr.decode()[-500:]}")
    deadline = time.monotonic() + START_TIMEOUT
    for address in addresses:
        while b"cluster_state:ok" not in _redis_command(address, b"CLUSTER INFO"):
            if time.monotonic() > deadline:
                raise BenchError(f"redis cluster: {address} never saw every slot served")
            time.sleep(0.05)
    return urls, [child for _, child in started]


def _redis_command(address: str, command: bytes) -> bytes:
    """One inline command's reply, raw (enough to look for a line in a bulk string)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), 2) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(65536)


def markdown_table(columns: Sequence[str], table: Sequence[Sequence[str]]) -> list[str]:
    """A padded markdown table: the first column left-aligned, the numbers after it right."""
    widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    # Numbers (every column but the first) are right-aligned (`---:`) so they line up as text too.
    dashes = ["-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)]
    return [line(columns), "|" + "|".join(dashes) + "|", *(line(t) for t in table)]


def nproc() -> int:
    # Like nproc(1): the CPUs this process may run on, not every CPU in the machine.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def reproduce(argv: Sequence[str], script: str = "bench/run.py") -> str:
    # `make bench` takes no flags (the target passes none), so flags mean the direct command.
    if not argv:
        return "make bench"
    return shlex.join([".venv/bin/python", script, *argv])


def _pick(choice: str, program: str, fallback: str) -> str:
    if choice == "auto":
        return program if shutil.which(program) else fallback
    if choice == program and not shutil.which(program):
        raise BenchError(f"{program} was asked for but is not on PATH")
    return choice


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop every child process.
    raise SystemExit(128 + signum)


def run_report(
    parse: Callable[[list[str]], argparse.Namespace],
    bench: Callable[[argparse.Namespace, list[str]], str],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, run, print the report (and append it to --markdown-out); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report = bench(args, argv)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; all started processes were stopped", file=sys.stderr)
        return 130
    except SystemExit:
        print("bench: terminated; all started processes were stopped", file=sys.stderr)
        raise
    print(report, end="")
    if args.markdown_out:
        with open(args.markdown_out, "a", encoding="utf-8") as out:
            out.write(report + "\n")
    return 0
