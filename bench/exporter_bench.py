"""certpager exporter vs Debian's prometheus-blackbox-exporter on many loopback TLS endpoints.

Not a test: prints figures. Starts one nginx serving a root -> intermediate -> leaf chain (3 certs
presented) on N addresses 127.1.x.y:8443, then probes every endpoint through both exporters, running
side by side and taking turns on batches of --batch targets (so load from other jobs hits both), at
the same client concurrency, in --passes passes (2 by default: first sight, then a repeat as
Prometheus scrapes), and prints per exporter and pass: probes per exporter-CPU-second (utime+stime of the
exporter process from /proc/PID/stat), wall time, peak RSS (VmHWM) and the certpager/blackbox ratio.
Then a certpager process with the N targets in its config probes them with its own scheduler, and
/metrics is timed with N targets cached.

Everything is loopback; every process started is stopped. Usage (root, for nginx and apt):
    .venv/bin/python bench/exporter_bench.py [--targets 10000] [--concurrency 256] [--batch 1000]
                                             [--passes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certpager import pki  # noqa: E402

PORT = 8443
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEADLINE = 900.0  # seconds for the whole bench


@dataclass
class Figures:
    name: str
    probes: int
    ok: int
    cpu: float
    wall: float
    hwm_mib: float
    batch_cpu: tuple[float, ...] = ()  # CPU seconds of each batch, in target order (interleaved passes)

    @property
    def per_cpu_second(self) -> float:
        return self.probes / self.cpu if self.cpu else float("inf")

    def line(self) -> str:
        return (f"{self.name:<22} probes={self.probes} ok={self.ok} wall={self.wall:.1f}s cpu={self.cpu:.2f}s "
                f"probes/cpu-s={self.per_cpu_second:.0f} peak_rss={self.hwm_mib:.1f}MiB")


def addresses(n: int) -> list[str]:
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def hwm_mib(pid: int, field: str = "VmHWM") -> float:
    """Peak RSS (VmHWM), or another /proc/PID/status memory field, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ensure_packages() -> None:
    missing = [pkg for binary, pkg in (("nginx", "nginx"), ("prometheus-blackbox-exporter",
                                                           "prometheus-blackbox-exporter"))
               if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} (bench only)", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, timeout=600)


def raise_fd_limit(needed: int) -> None:
    """Children inherit the limit: nginx holds one listening socket per endpoint."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs CAP_SYS_RESOURCE
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(needed, hard), max(needed, hard)))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(f"need {needed} file descriptors, the hard limit is {hard}: use fewer --targets")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_pki(directory: Path, addrs: list[str], unique: bool) -> tuple[str, Path]:
    """One root and intermediate; per address its own leaf (``unique``), or one leaf for all.

    Returns the nginx ``ssl_certificate`` value (with ``$server_addr`` when unique) and the key file.
    Every file holds leaf, intermediate and root: 3 certificates presented.
    """
    root = pki.make_root("bench Root")
    inter = pki.make_intermediate(root, "bench Intermediate")
    tail = inter.cert_pem + root.cert_pem
    key = directory / "leaf.key"
    key.write_bytes(pki.make_leaf(inter, ("bench.test",)).key_pem)  # every leaf uses the same key slot
    if not unique:
        (directory / "chain.pem").write_bytes(pki.make_leaf(inter, ("bench.test",)).cert_pem + tail)
        return str(directory / "chain.pem"), key
    leaves = directory / "leaves"
    leaves.mkdir()
    for addr in addrs:
        (leaves / f"{addr}.pem").write_bytes(pki.make_leaf(inter, (f"{addr}.bench.test", addr)).cert_pem + tail)
    return f"{leaves}/$server_addr.pem", key


def nginx_conf(directory: Path, addrs: list[str], cert: str, key: Path) -> Path:
    listens = "\n".join(f"    listen {a}:{PORT} ssl;" for a in addrs)
    conf = directory / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 2;
worker_rlimit_nofile {len(addrs) + 4096};
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
daemon off;
events {{ worker_connections {len(addrs) + 2048}; accept_mutex off; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fcgi; uwsgi_temp_path {directory}/uwsgi; scgi_temp_path {directory}/scgi;
  ssl_session_cache off;
  ssl_session_tickets off;
  ssl_protocols TLSv1.2 TLSv1.3;
  server {{
{listens}
    ssl_certificate {cert};
    ssl_certificate_key {key};
    return 200 "ok\\n";
  }}
}}
""")
    return conf


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds * 10)):
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def wait_tcp(host: str, port: int, seconds: float = 120) -> None:
    for _ in range(int(seconds * 10)):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{host}:{port} did not come up")


async def probe_all(base: str, module: str, targets: list[str], concurrency: int, success_metric: str) -> int:
    """GET /probe for every target with at most ``concurrency`` requests in flight; returns successes."""
    ok = 0
    queue = iter(targets)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal ok
            for target in queue:
                async with session.get(f"{base}/probe", params={"module": module, "target": target},
                                       headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"}) as response:
                    text = await response.text()
                ok += any(line.startswith(success_metric) and line.endswith(" 1") for line in text.splitlines())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


@dataclass
class Exporter:
    """A running exporter under test and how to ask it for a probe."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    module: str
    success_metric: str

    async def probe(self, targets: list[str], concurrency: int) -> tuple[int, float, float]:
        """Probe ``targets``; (successes, exporter CPU seconds, wall seconds)."""
        cpu0, t0 = cpu_seconds(self.proc.pid), time.perf_counter()
        ok = await probe_all(self.base, self.module, targets, concurrency, self.success_metric)
        return ok, cpu_seconds(self.proc.pid) - cpu0, time.perf_counter() - t0


async def interleaved_passes(exporters: list[Exporter], targets: list[str], concurrency: int, passes: int,
                             batch: int) -> list[list[Figures]]:
    """Per exporter, one Figures per pass over every target.

    The exporters take turns on batches of the same targets (the first to go alternates), so load
    from other jobs on a shared machine lands on both alike, instead of on whichever ran first.
    Pass 1 sees each certificate for the first time; later passes repeat, as Prometheus does.
    """
    for exporter in exporters:  # warm up (imports, first contexts), outside the figures
        await exporter.probe(targets[:concurrency], concurrency)
    batches = [targets[i:i + batch] for i in range(0, len(targets), batch)]
    figures: list[list[Figures]] = [[] for _ in exporters]
    for number in range(1, passes + 1):
        totals = [[0, 0.0, 0.0] for _ in exporters]
        batch_cpu: list[list[float]] = [[] for _ in exporters]
        for turn, chunk in enumerate(batches):
            order = list(range(len(exporters)))
            if turn % 2:
                order.reverse()
            for i in order:
                ok, cpu, wall = await exporters[i].probe(chunk, concurrency)
                totals[i][0] += ok
                totals[i][1] += cpu
                totals[i][2] += wall
                batch_cpu[i].append(cpu)
        for i, exporter in enumerate(exporters):
            successes, cpu_total, wall_total = totals[i]
            figures[i].append(Figures(f"{exporter.name} pass {number}", len(targets), int(successes), cpu_total,
                                      wall_total, hwm_mib(exporter.proc.pid), tuple(batch_cpu[i])))
    return figures


def batch_ratios(ours: Figures, theirs: Figures) -> str:
    """The ratio of each batch pair, which ran back to back on the same targets: its spread shows how
    much of a pass's ratio is the machine's noise (a CPU time is read in 10 ms ticks)."""
    ratios = sorted(t / o for o, t in zip(ours.batch_cpu, theirs.batch_cpu, strict=True) if o > 0)
    if not ratios:
        return "no batches"
    return (f"median x{statistics.median(ratios):.2f}, range x{ratios[0]:.2f}-x{ratios[-1]:.2f} "
            f"over {len(ratios)} batches")


def blackbox_argv(work: Path, port: int) -> list[str]:
    conf = work / "blackbox.yml"
    conf.write_text("modules:\n  tls:\n    prober: tcp\n    timeout: 10s\n    tcp:\n      tls: true\n"
                    "      tls_config:\n        insecure_skip_verify: true\n")
    binary = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
    return [binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}"]


def certpager_argv(conf: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "exporter", f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warning"]


BENCH_MODULE = "modules:\n  bench:\n    timeout: 10s\n    ip_protocol: ip4\n    tls: {insecure_skip_verify: true}\n"


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
    return time.perf_counter() - t0, body


def probes_done(body: bytes) -> int:
    return int(sum(float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
                   if line.startswith(b"certpager_exporter_probes_total{")))


async def run_certpager_scheduler(
    work: Path, targets: list[str], concurrency: int
) -> tuple[Figures, list[float], int, float]:
    # 10,000 targets come from file_sd, as they would in production (not 10,000 YAML entries).
    (work / "targets.json").write_text(json.dumps([{"targets": targets, "labels": {"env": "bench"}}]))
    conf = work / "certpager-scheduler.yml"
    conf.write_text(f"global: {{scrape_interval: 1h, jitter: 0, concurrency: {concurrency}}}\n{BENCH_MODULE}"
                    "target_files: [{files: [targets.json], module: bench, refresh_interval: 1h}]\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with process(certpager_argv(conf, port), work / "certpager-scheduler.log") as proc:
        await wait_http(f"http://127.0.0.1:{port}/-/ready", proc)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            done = 0
            while done < len(targets) and time.perf_counter() - t0 < 600:
                await asyncio.sleep(2.0)  # each progress check is a full scrape: keep them rare
                _, body = await scrape(session, url)
                done = probes_done(body)
            wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
            ok = body.count(b"\ntls_probe_success{") and sum(
                1 for line in body.splitlines() if line.startswith(b"tls_probe_success{") and line.endswith(b" 1"))
            times = [(await scrape(session, url))[0] for _ in range(7)]
        figures = Figures("certpager scheduler", done, int(ok), cpu, wall, hwm_mib(proc.pid))
        return figures, times, len(body), hwm_mib(proc.pid, "VmRSS")


async def compare_probe_endpoints(work: Path, targets: list[str], concurrency: int, passes: int,
                                  batch: int) -> None:
    bb_port, cp_port = free_port(), free_port()
    # As many /probe requests at once as the client sends (the default, 128, would answer the rest 503).
    (work / "certpager-probe.yml").write_text(BENCH_MODULE + f"probe: {{max_concurrent: {concurrency}}}\n")
    with process(blackbox_argv(work, bb_port), work / "blackbox.log") as bb_proc, \
            process(certpager_argv(work / "certpager-probe.yml", cp_port), work / "certpager-probe.log") as cp_proc:
        await wait_http(f"http://127.0.0.1:{bb_port}/-/healthy", bb_proc)
        await wait_http(f"http://127.0.0.1:{cp_port}/-/ready", cp_proc)
        exporters = [Exporter("blackbox /probe", bb_proc, f"http://127.0.0.1:{bb_port}", "tls", "probe_success"),
                     Exporter("certpager /probe", cp_proc, f"http://127.0.0.1:{cp_port}", "bench",
                              "tls_probe_success")]
        blackbox, certpager = await interleaved_passes(exporters, targets, concurrency, passes, batch)
    print("\n".join(f.line() for f in blackbox + certpager), flush=True)
    for number, (ours, theirs) in enumerate(zip(certpager, blackbox, strict=True), start=1):
        ratio = ours.per_cpu_second / theirs.per_cpu_second
        print(f"ratio certpager/blackbox, pass {number}: probes per CPU-second x{ratio:.2f}, wall "
              f"{ours.wall:.1f}s vs {theirs.wall:.1f}s, peak RSS {ours.hwm_mib:.0f} vs {theirs.hwm_mib:.0f} MiB",
              flush=True)
        print(f"  per batch (same targets, back to back): {batch_ratios(ours, theirs)}", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    ensure_packages()
    raise_fd_limit(args.targets + 2 * args.concurrency + 2048)
    targets = [f"{a}:{PORT}" for a in addresses(args.targets)]
    with tempfile.TemporaryDirectory(prefix="certpager-bench-") as tmp:
        work = Path(tmp)
        cert, key = write_pki(work, addresses(args.targets), not args.shared_leaf)
        conf = nginx_conf(work, addresses(args.targets), cert, key)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with process([nginx, "-c", str(conf), "-p", str(work)], work / "nginx.log") as proc:
            last = addresses(args.targets)[-1]
            await wait_tcp(last, PORT)
            if proc.poll() is not None:
                raise SystemExit((work / "nginx.log").read_text())
            leaves = "one leaf for all" if args.shared_leaf else "a distinct leaf each"
            print(f"nginx serving {args.targets} endpoints (3-certificate chains, {leaves}, one intermediate "
                  f"and root), client concurrency {args.concurrency}", flush=True)
            if "probe" in args.phases:
                await compare_probe_endpoints(work, targets, args.concurrency, args.passes, args.batch)
            if "scheduler" not in args.phases:
                return
            scheduled, times, size, settled = await run_certpager_scheduler(work, targets, args.concurrency)
            print(scheduled.line() + f" settled_rss={settled:.1f}MiB  (CPU includes its progress scrapes)", flush=True)
            print(f"certpager /metrics with {args.targets} targets cached: {size / 1e6:.1f} MB, "
                  f"median {statistics.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms "
                  f"(client-side, full body)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--shared-leaf", action="store_true",
                        help="serve one leaf on every address (default: a distinct leaf per address)")
    parser.add_argument("--batch", type=int, default=1000,
                        help="probe phase: the exporters take turns on batches of this many targets")
    parser.add_argument("--passes", type=int, default=2,
                        help="probe phase: passes over every target per exporter (pass 1 is first sight; "
                             "later ones repeat, as Prometheus does)")
    parser.add_argument("--phases", default="probe,scheduler",
                        help="comma-separated: probe (both /probe endpoints), scheduler (certpager background)")
    args = parser.parse_args()
    if not 1 <= args.targets <= 60_000:
        raise SystemExit("--targets must be between 1 and 60000")
    if args.batch < args.concurrency:
        raise SystemExit("--batch must be at least --concurrency (a batch keeps every client slot busy)")
    if not 1 <= args.passes <= 5:
        raise SystemExit("--passes must be between 1 and 5")
    try:
        asyncio.run(asyncio.wait_for(main_async(args), DEADLINE))
    except TimeoutError:
        raise SystemExit(f"bench did not finish within {DEADLINE:.0f} s") from None


if __name__ == "__main__":
    main()
