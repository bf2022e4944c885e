"""Download one large file (1 GiB by default) through each proxy: MB/s, and the proxies' memory.

An nginx upstream serves a sparse file of --size bytes (without nginx, this script serves it
itself, see --serve-port). The client, curl -o /dev/null (or a Python reader without curl),
discards the body and checks that exactly --size bytes arrived, once unmeasured and then
--repeat times (the median counts), from: the upstream directly;
nginx as a proxy; the gateway (a route with `auth: none`, one worker, access log off); and
aiohttp-bare relaying in pieces (bench/bare_proxy.py --stream). While a proxy relays, the RSS
of its processes is sampled every 50 ms from /proc: peak minus start is how much of the body it
held. Issue 13's targets are judged under the table: the gateway at least half nginx-proxy's
MB/s, with flat memory (its RSS grows by at most 64 MiB).
"""

# Over 400 lines: one script on purpose, so the upstream, the client, the memory sampling and the
# contenders of this one measurement are read in one place; shared pieces are modules beside it.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

# Run as a script (`python bench/download.py`), so bench/ is on sys.path and its siblings import.
from harness import (
    BENCH,
    EXPECTED_BODY,
    BenchError,
    Child,
    Processes,
    _pick,
    free_port,
    markdown_table,
    nginx_version,
    nproc,
    probe,
    proxy_server,
    reproduce,
    run_report,
    start_nginx,
    wait_for_port,
)
from run import GATEWAYS, gateway_problems, start_gateway
from targets import limit_target, ratio_target, render_verdicts

CONTENDERS = ("direct", "nginx-proxy", "gateway", "aiohttp-bare")
BLOB_PATH = "/blob"
MIB = 1024 * 1024
DEFAULT_SIZE = 1024 * MIB
SAMPLE_INTERVAL = 0.05  # seconds between RSS samples
# Issue 13: the gateway at least this times nginx-proxy's MB/s, its RSS growing at most this.
NGINX_FACTOR = 0.5
FLAT_MEMORY_MIB = 64.0
# A download slower than this is a failure, not a figure (5 MB/s: far below any contender).
SLOWEST_BYTES_PER_SECOND = 5_000_000
MIN_DOWNLOAD_TIMEOUT = 60.0
CHUNK = 256 * 1024  # what the builtin upstream writes, and the Python reader reads, at once
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB}


@dataclass(frozen=True)
class Result:
    name: str
    seconds: float
    size: int
    rss_start: int | None = None  # bytes; None where not sampled (direct) or no /proc
    rss_peak: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def mb_per_second(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def growth_mib(self) -> float | None:
        if self.rss_start is None or self.rss_peak is None:
            return None
        return (self.rss_peak - self.rss_start) / MIB


# ---------------------------------------------------------------------------------------------
# The upstream: nginx serving a sparse file, or this script's own streaming server.


def blob_server(port: int, root: Path) -> str:
    # The probe path answers like bench/run.py's upstream, so the contenders' start-up probes
    # work unchanged; the blob is a file nginx sends with sendfile.
    return f"""\
    server {{
        listen 127.0.0.1:{port};
        sendfile on;
        location = {BLOB_PATH} {{
            root {root};
            default_type application/octet-stream;
        }}
        location / {{
            default_type application/json;
            return 200 '{EXPECTED_BODY.decode()}';
        }}
    }}"""


def start_blob_upstream(procs: Processes, kind: str, size: int) -> int:
    port = free_port()
    if kind == "nginx":
        root = procs.workdir / "blob-root"
        root.mkdir()
        # Sparse: a GiB of zeros that takes no disk, and reads from no disk either.
        with (root / BLOB_PATH.lstrip("/")).open("wb") as blob:
            blob.truncate(size)
        start_nginx(procs, "upstream", port, blob_server(port, root))
    else:
        argv = [sys.executable, __file__, "--serve-port", str(port), "--size", str(size)]
        wait_for_port(procs.start("upstream", argv), port)
    probe("upstream", port)
    return port


class BlobResponder(asyncio.Protocol):
    """GET /blob answers size zero bytes, written as the transport drains (it pauses us when
    its buffer is full); any other request the probe's small JSON. One request at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.remaining = 0
        self.paused = False
        self.zeros = bytes(CHUNK)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer()

    def _answer(self) -> None:
        while self.transport is not None and not self.remaining:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            request_line = self.buffer[: self.buffer.find(b"\r\n")].split()
            self.buffer = self.buffer[end + 4 :]
            if len(request_line) >= 2 and request_line[1] == BLOB_PATH.encode():
                head = f"Content-Type: application/octet-stream\r\nContent-Length: {self.size}"
                self.transport.write(f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n".encode())
                self.remaining = self.size
                self._pump()
            else:
                head = f"Content-Type: application/json\r\nContent-Length: {len(EXPECTED_BODY)}"
                self.transport.write(f"HTTP/1.1 200 OK\r\n{head}\r\n\r\n".encode() + EXPECTED_BODY)

    def _pump(self) -> None:
        while self.transport is not None and self.remaining and not self.paused:
            n = min(CHUNK, self.remaining)
            self.transport.write(self.zeros if n == CHUNK else self.zeros[:n])
            self.remaining -= n
        if not self.remaining:
            self._answer()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve(port: int, size: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(lambda: BlobResponder(size), "127.0.0.1", port)
        async with server:
            await stop.wait()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------------------------
# Memory: the RSS of a contender's processes, sampled on a thread while the download runs.


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a gateway with workers forks them), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The fields after the command, which may hold spaces, start after its last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def rss(pids: Sequence[int]) -> int | None:
    """Summed VmRSS in bytes; None where /proc does not say (not Linux)."""
    total, seen = 0, False
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024  # reported in kB
                    seen = True
                    break
    return total if seen else None


class RssSampler:
    """The highest RSS seen from start() to stop(), sampled every SAMPLE_INTERVAL."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start_rss = rss(self.pids)
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        now = rss(self.pids)
        if now is not None and (self.peak is None or now > self.peak):
            self.peak = now

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------------------------------------
# The client: the whole body read and thrown away, its length checked.


def download_timeout(size: int) -> float:
    return max(MIN_DOWNLOAD_TIMEOUT, size / SLOWEST_BYTES_PER_SECOND)


def download_curl(name: str, url: str, size: int) -> float:
    """curl -o /dev/null; the seconds it took, from curl's own clock."""
    timeout = download_timeout(size)
    argv = ["curl", "--silent", "--show-error", "--output", "/dev/null", "--max-time"]
    argv += [f"{timeout:g}", "--write-out", "%{http_code} %{size_download} %{time_total}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, check=False)
    # curl exits 18 when the body was shorter than its Content-Length: a cut, never a figure.
    if done.returncode != 0:
        raise BenchError(f"{name}: curl failed ({done.returncode}): {done.stderr.strip()}")
    try:
        status, received, seconds = done.stdout.split()
        return _checked(name, int(status), int(received), size, float(seconds))
    except ValueError:
        raise BenchError(f"{name}: cannot read curl's --write-out {done.stdout!r}") from None


def download_python(name: str, url: str, size: int) -> float:
    """http.client, reading into one reused buffer; the seconds it took."""
    host_port = url.split("/")[2]
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=download_timeout(size))
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    began = time.perf_counter()
    try:
        conn.request("GET", BLOB_PATH)
        response = conn.getresponse()
        while n := response.readinto(buffer):
            received += n
        # http.client raises IncompleteRead on a body shorter than its Content-Length.
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{name}: the download failed after {received:,} bytes: {exc!r}") from None
    finally:
        conn.close()
    return _checked(name, response.status, received, size, time.perf_counter() - began)


def _checked(name: str, status: int, received: int, size: int, seconds: float) -> float:
    if status != 200:
        raise BenchError(f"{name}: the download got {status}, not 200")
    if received != size:
        raise BenchError(f"{name}: {received:,} bytes arrived, not {size:,}")
    return seconds


# ---------------------------------------------------------------------------------------------
# Contenders.


@dataclass(frozen=True)
class Started:
    port: int
    child: Child | None = None  # None for direct
    stdout: Path | None = None  # the gateway's, to report the warnings it logged


def start_contender(procs: Processes, name: str, upstream_port: int) -> Started:
    """Start and probe the contender."""
    if name == "direct":
        return Started(upstream_port)
    port = free_port()
    if name == "nginx-proxy":
        # Buffers in memory only: with its default (up to 1 GiB of temp files on disk) nginx
        # would measure the disk, and hold what the gateway must not.
        server = proxy_server(port, upstream_port, ["proxy_max_temp_file_size 0;"])
        child = start_nginx(procs, name, port, server)
        probe(name, port)
        return Started(port, child)
    if name == "gateway":
        started = start_gateway(procs, name, GATEWAYS[name], port, upstream_port)
        return Started(port, started.child, started.stdout)
    if name == "aiohttp-bare":
        argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port), "--stream"]
        child = procs.start(name, [*argv, "--upstream", f"http://127.0.0.1:{upstream_port}"])
        wait_for_port(child, port)
        probe(name, port)
        return Started(port, child)
    raise BenchError(f"unknown contender {name!r}")


def measure(
    procs: Processes,
    name: str,
    upstream_port: int,
    size: int,
    download: Callable[[str, str, int], float],
    repeat: int,
) -> Result:
    started = start_contender(procs, name, upstream_port)
    url = f"http://127.0.0.1:{started.port}{BLOB_PATH}"
    child = started.child

    def timed() -> float:
        # The first download warms caches and connections; it is checked, not counted.
        download(name, url, size)
        return statistics.median(download(name, url, size) for _ in range(repeat))

    if child is None:
        return Result(name, timed(), size)
    try:
        # The start is taken after the probe, before the first download: what a started proxy
        # holds at rest. The peak is the highest over every download, the first included.
        with RssSampler(process_tree(child.proc.pid)) as sampler:
            seconds = timed()
        if child.proc.poll() is not None:
            raise BenchError(child.describe_exit())
    finally:
        procs.stop(child.proc)
    notes = gateway_problems(started.stdout)
    return Result(name, seconds, size, sampler.start_rss, sampler.peak, notes)


# ---------------------------------------------------------------------------------------------
# Report.


def _mib(value: int | float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f}"


def render(results: Sequence[Result], header: str) -> str:
    by_name = {r.name: r for r in results}
    nginx = by_name.get("nginx-proxy")
    columns = ["contender", "MB/s", "median s", "vs nginx-proxy"]
    columns += ["RSS start MiB", "RSS peak MiB", "RSS growth MiB"]
    table = []
    for r in results:
        vs = f"{r.mb_per_second / nginx.mb_per_second:.2f}x" if nginx else "n/a"
        growth = r.growth_mib
        table.append(
            [
                r.name,
                f"{r.mb_per_second:,.0f}",
                f"{r.seconds:.2f}",
                vs,
                _mib(r.rss_start),
                _mib(r.rss_peak),
                "n/a" if growth is None else f"{growth:,.1f}",
            ]
        )
    out = [header, "", *markdown_table(columns, table)]
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes]
    if notes:
        out += ["", *notes]
    gateway = by_name.get("gateway")
    verdicts = [
        ratio_target(
            f"gateway >= {NGINX_FACTOR:g}x nginx-proxy's MB/s",
            gateway.mb_per_second if gateway else None,
            nginx.mb_per_second if nginx else None,
            NGINX_FACTOR,
            unit="MB/s",
        ),
        limit_target(
            "gateway's memory flat (RSS peak minus start during the download)",
            gateway.growth_mib if gateway else None,
            FLAT_MEMORY_MIB,
            unit="MiB",
        ),
    ]
    out += ["", *render_verdicts("Targets (issue 13), from this table:", verdicts)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Main.


def byte_size(value: str) -> int:
    """1GiB, 256MiB, 4096 (bytes)."""
    m = _SIZE.match(value)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected a size like 1GiB, 256MiB or 4096, not {value!r}"
        )
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {value!r}")
    return size


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--size", type=byte_size, default=DEFAULT_SIZE, help="bytes to download (default 1GiB)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="downloads per contender; the median counts"
    )
    parser.add_argument(
        "--only", help=f"comma-separated contenders to run (of: {', '.join(CONTENDERS)})"
    )
    parser.add_argument(
        "--client", choices=("auto", "curl", "python"), default="auto", help="auto: curl if found"
    )
    parser.add_argument(
        "--upstream", choices=("auto", "nginx", "builtin"), default="auto", help="auto: nginx"
    )
    parser.add_argument("--markdown-out", metavar="FILE", help="append the report to FILE")
    # Internal: this script as the upstream when nginx is missing.
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in CONTENDERS]
        if unknown or not wanted:
            parser.error(f"--only: unknown {unknown or args.only!r}; known: {CONTENDERS}")
        args.contenders = [n for n in CONTENDERS if n in wanted]
    else:
        args.contenders = list(CONTENDERS)
    return args


def bench(args: argparse.Namespace, argv: Sequence[str]) -> str:
    client = _pick(args.client, "curl", "python")
    upstream_kind = _pick(args.upstream, "nginx", "builtin")
    have_nginx = shutil.which("nginx") is not None
    # curl and nginx are optional: without them the run goes on, and says what it used instead.
    if args.client == "auto" and client != "curl":
        print("bench: curl not found: the client is Python's http.client", file=sys.stderr)
    if not have_nginx:
        skips = " and nginx-proxy is skipped" if "nginx-proxy" in args.contenders else ""
        print(f"bench: nginx not found: this script serves the file{skips}", file=sys.stderr)
    if not Path("/proc/self/status").exists():
        print("bench: no /proc: memory is not sampled", file=sys.stderr)
    download = download_curl if client == "curl" else download_python
    results: list[Result] = []
    skipped: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-download-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        upstream_port = start_blob_upstream(procs, upstream_kind, args.size)
        for name in args.contenders:
            if name == "nginx-proxy" and not have_nginx:
                skipped.append("nginx-proxy (nginx not installed)")
                continue
            print(f"bench: download through {name} ...", file=sys.stderr, flush=True)
            result = measure(procs, name, upstream_port, args.size, download, args.repeat)
            results.append(result)
            growth = result.growth_mib
            memory = "" if growth is None else f", RSS +{growth:,.1f} MiB"
            print(
                f"bench: {name}: {result.mb_per_second:,.0f} MB/s{memory}",
                file=sys.stderr,
                flush=True,
            )
    upstream_label = f"nginx {nginx_version()}" if upstream_kind == "nginx" else "builtin"
    client_label = "curl -o /dev/null" if client == "curl" else "http.client"
    python = ".".join(str(v) for v in sys.version_info[:3])
    header = (
        f"**download:** {args.size:,} bytes ({args.size / MIB:,.0f} MiB), the median of"
        f" {args.repeat} per contender after one unmeasured, {client_label}"
        f" · **upstream:** {upstream_label}"
        f" · **RSS:** sampled every {SAMPLE_INTERVAL * 1000:.0f} ms · **nproc:** {nproc()}"
        f" · **Python:** {python}"
        f" · **reproduce:** `{reproduce(argv, 'bench/download.py')}`"
    )
    report = render(results, header)
    if skipped:
        report += f"\nskipped: {', '.join(skipped)}\n"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.serve_port is not None:
        serve(args.serve_port, args.size)
        return 0
    return run_report(parse_args, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
