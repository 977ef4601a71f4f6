#!/usr/bin/python3
"""Side-by-side benchmark of lbcore's Layer 7 proxy, HAProxy (TCP mode) and a direct
connection, in one run, in network namespaces.

Topology (tests/lab/netns.py): three hosts on one bridge, each attached by a veth pair —
client (.10), load balancer (.2) and server (.11). The direct path goes client -> server
over the bridge; the proxied paths go client -> lb -> server, two hops on the same
bridge, so every path sees the same link type, MTU and offloads. HAProxy and lbcore run
side by side in the lb host, each with one frontend/service per workload; the same
servers (tests/bench's lbbench serve, storescp) and the same clients serve all three
paths. Each workload runs once per path per round, in an order that rotates every round,
and the table shows medians.

CPU placement (--placement): "dedicated" (the default) gives the proxies the upper half
of the cores and the clients and servers the lower half, as in a hospital, where the
load balancer is a VM of its own and the modality and the PACS are other machines. Both
proxies then run one thread per core they have (HAProxy's nbthread, lbcore's worker
count from its CPU affinity), and the direct path's peers get exactly the cores they get
on the proxied paths. "shared" pins nothing: client, server and proxy compete for the
same cores, so the proxy's CPU cost is taken from the peers (a harsher, noisier test).

The CPU time each proxy process used during each measurement is read from
/proc/PID/stat, so the table also says what each proxy cost, independently of where the
scheduler placed it.

Run through tests/bench/run (installs packages, builds, raises limits, puts tests/ on
PYTHONPATH for the lab package); writes docs/benchmarks.md from the real run.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from lab import dicom_files
    from lab.binaries import BIN_DIR as BIN
    from lab.binaries import REPO
    from lab.netns import Lab
    from lab.programs import program
    from lab.wait import listening, wait_for, wait_listening
except ModuleNotFoundError as e:
    sys.exit(f"bench.py: {e}: run it through tests/bench/run (or with PYTHONPATH=tests)")

SUBNET = "10.78.0"
LB_IP, CLIENT_IP, SERVER_IP = f"{SUBNET}.2", f"{SUBNET}.10", f"{SUBNET}.11"
# Ports of the servers; HAProxy listens on port+10000, lbcore on port+20000.
# "dicom": storescp receives and discards; "dicomstore": it writes every image to a file
# (in memory, /dev/shm), as a PACS stores what it receives.
PORTS = {"bulk": 5001, "rate": 5002, "mllp": 2575, "dicom": 11112, "dicomstore": 11113}
PATHS = ("direct", "haproxy", "lbcore")
# "lbcore-b": a second lbcore with other options (--compare-lbcore), for tuning.
OFFSET = {"direct": 0, "haproxy": 10000, "lbcore": 20000, "lbcore-b": 30000}
# Measured in each round, in this order; "memory" (--only) is the separate idle test.
WORKLOADS = ("bulk1", "bulk8", "rate", "hl7", "hl7one", "dicom", "dicomstore")
MEM_PORT = 26002
HAPROXY_MAXPIPES = 256  # the fresh proxies of the memory test
DICOM_AE = "BENCH-SCP"

HAPROXY_GLOBAL = """\
global
    nbthread {nbthread}
    maxconn {maxconn}
    maxpipes {maxpipes}
    tune.pipesize 262144

defaults
    mode tcp
    option splice-request
    option splice-response
    option tcpka
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    maxconn {maxconn}
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def target(path, workload):
    host = SERVER_IP if path == "direct" else LB_IP
    return f"{host}:{PORTS[workload] + OFFSET[path]}"


def haproxy_maxconn():
    # Two sockets per connection plus the pipe pool, within the open-file limit.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1000, (soft - 2 * HAPROXY_MAXPIPES - 100) // 2)


def haproxy_config(ports, nbthread):
    text = HAPROXY_GLOBAL.format(nbthread=nbthread, maxconn=haproxy_maxconn(), maxpipes=HAPROXY_MAXPIPES)
    for name, (listen, server) in ports.items():
        text += f"""
frontend f_{name}
    bind {LB_IP}:{listen}
    default_backend b_{name}

backend b_{name}
    server s1 {SERVER_IP}:{server}
"""
    return text


def lbcore_config(ports):
    text = ""
    for name, (listen, server) in ports.items():
        text += f"""
[[service]]
label = "{name.upper()}"
layer = 7
address = "{LB_IP}"
ports = [{listen}]
scheduler = "rr"
check = {{ kind = "none" }}

[[service.real_server]]
label = "S1"
address = "{SERVER_IP}"
port = {server}
"""
    return text


def cpu_seconds(pid):
    """(work, spin): CPU seconds of the process's threads, those of lbcore's idle-priority
    busy-poll threads apart (they run only when the core would otherwise halt)."""
    work = spin = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, rest = (task / "stat").read_text().rsplit(")", 1)
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields = rest.split()
        t = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if head.split("(", 1)[1].startswith("busy-poll"):
            spin += t
        else:
            work += t
    return work, spin


def status_kb(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, args):
        self.args = args
        cores = sorted(os.sched_getaffinity(0))
        if args.placement == "dedicated" and len(cores) >= 2:
            half = len(cores) // 2
            self.cpus = {"peers": cores[:half], "proxy": cores[half:]}
        else:
            self.cpus = {"peers": cores, "proxy": cores}
        self.tmp = Path(tempfile.mkdtemp(prefix="lbbench-"))
        self.stored = Path(tempfile.mkdtemp(prefix="lbbench-stored-", dir="/dev/shm"))
        self.lab = Lab("lbb", subnet=SUBNET)
        self.lb = self.lab.add_host("lb", 2)
        self.client = self.lab.add_host("client", 10)
        self.server = self.lab.add_host("server", 11)
        for h in (self.lb, self.client, self.server):
            # Many short connections: reuse TIME_WAIT ports for new outgoing
            # connections (client and proxies), wide port range, deep accept queues.
            h.run([program("sysctl"), "-qw", "net.ipv4.tcp_tw_reuse=1",
                   "net.ipv4.ip_local_port_range=1024 65535",
                   # ... except the proxies' listening ports (a fresh proxy binds later).
                   "net.ipv4.ip_local_reserved_ports=10000-42000",
                   "net.core.somaxconn=4096", "net.ipv4.tcp_max_syn_backlog=8192"])
        self.paths = PATHS + (("lbcore-b",) if args.compare_lbcore or args.compare_binary else ())
        self.proxy_pid = {}
        self.samples = {}  # (row, path) -> [values]
        self.cpu = {}  # (workload, path) -> [cpu fraction of one core]
        self.spin = {}  # the same, of lbcore's busy-poll threads

    # -- peers and proxies -------------------------------------------------------------

    def pinned(self, role, cmd):
        """`cmd` bound to the cores of `role` (taskset execs, so the pid stays the same)."""
        if self.args.placement != "dedicated":
            return cmd
        return [program("taskset"), "-c", ",".join(map(str, self.cpus[role])), *cmd]

    def peer_threads(self):
        return ["--threads", str(len(self.cpus["peers"]))]

    def start(self):
        s = self.server
        s.spawn(self.pinned("peers", [str(BIN / "lbbench"), *self.peer_threads(), "serve", "--bulk", f"{SERVER_IP}:{PORTS['bulk']}",
                 "--rate", f"{SERVER_IP}:{PORTS['rate']}", "--mllp", f"{SERVER_IP}:{PORTS['mllp']}"]))
        s.spawn(self.pinned("peers", [program("env"), "TCP_NODELAY=1", program("storescp"), "--aetitle", DICOM_AE, "--ignore",
                                      str(PORTS["dicom"])]))
        s.spawn(self.pinned("peers", [program("env"), "TCP_NODELAY=1", program("storescp"), "--aetitle", DICOM_AE,
                                      "-od", str(self.stored), str(PORTS["dicomstore"])]))
        for port in PORTS.values():
            wait_listening(s, port)
        self.proxy_pid["haproxy"] = self.start_haproxy(
            {w: (p + OFFSET["haproxy"], p) for w, p in PORTS.items()}, "main")
        self.proxy_pid["lbcore"] = self.start_lbcore(
            {w: (p + OFFSET["lbcore"], p) for w, p in PORTS.items()}, "main")
        if "lbcore-b" in self.paths:
            self.proxy_pid["lbcore-b"] = self.start_lbcore(
                {w: (p + OFFSET["lbcore-b"], p) for w, p in PORTS.items()}, "b",
                shlex.split(self.args.compare_lbcore), self.args.compare_binary)
        for w, p in PORTS.items():
            for path in self.paths[1:]:
                wait_listening(self.lb, p + OFFSET[path])

    def start_haproxy(self, ports, tag):
        cfg = self.tmp / f"haproxy-{tag}.cfg"
        cfg.write_text(haproxy_config(ports, len(self.cpus["proxy"])))
        self.lb.run([program("haproxy"), "-c", "-q", "-f", str(cfg)])
        logf = open(self.tmp / f"haproxy-{tag}.log", "w")
        p = self.lb.spawn(self.pinned("proxy", [program("haproxy"), "-db", "-f", str(cfg)]), stdout=logf,
                          stderr=subprocess.STDOUT)
        return p

    def start_lbcore(self, ports, tag, extra=(), binary=None):
        cfg = self.tmp / f"lbcore-{tag}.toml"
        cfg.write_text(lbcore_config(ports))
        logf = open(self.tmp / f"lbcore-{tag}.log", "w")
        p = self.lb.spawn(self.pinned("proxy", [str(binary or BIN / "lbcore"), "--config", str(cfg), "--socket", str(self.tmp / f"lbcore-{tag}.sock"),
                           "--state", str(self.tmp / f"lbcore-{tag}-state.json"), "--no-manage-addresses", *extra]),
                          stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, LBCORE_LOG="warn"))
        return p

    # -- workloads --------------------------------------------------------------------

    def client_json(self, args, timeout):
        r = self.client.run(self.pinned("peers", [str(BIN / "lbbench"), *self.peer_threads(), *args]),
                            timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"lbbench {' '.join(args)} failed: {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def measure(self, workload, path, fn):
        proc = self.proxy_pid.get(path)
        c0, t0 = (cpu_seconds(proc.pid) if proc else (0.0, 0.0)), time.monotonic()
        values = fn()
        c1, t1 = (cpu_seconds(proc.pid) if proc else (0.0, 0.0)), time.monotonic()
        if proc:
            if proc.poll() is not None:
                raise RuntimeError(f"{path} exited with {proc.returncode}")
            self.cpu.setdefault((workload, path), []).append((c1[0] - c0[0]) / (t1 - t0))
            self.spin.setdefault((workload, path), []).append((c1[1] - c0[1]) / (t1 - t0))
        for row, v in values.items():
            self.samples.setdefault((row, path), []).append(v)
        log(f"  {workload:6} {path:8} " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def bulk(self, path, streams):
        r = self.client_json(["bulk", target(path, "bulk"), "--streams", str(streams),
                              "--secs", str(self.args.secs)], timeout=60)
        return {f"bulk{streams}": r["gbit_s"]}

    def rate(self, path):
        r = self.client_json(["rate", target(path, "rate"), "--clients", "64", "--secs", str(self.args.secs)], timeout=60)
        if r["errors"]:
            log(f"  rate via {path}: {r['errors']} failed requests")
        return {"rate": r["conn_per_s"], "rate_p50": r["p50_ms"], "rate_p99": r["p99_ms"]}

    def mllp(self, path, conns):
        r = self.client_json(["mllp", target(path, "mllp"), "--conns", str(conns), "--secs", str(self.args.secs)],
                             timeout=60)
        key = "hl7" if conns > 1 else "hl7one"
        return {key: r["msg_per_s"], f"{key}_p50": r["p50_ms"], f"{key}_p99": r["p99_ms"]}

    def dicom(self, path, workload="dicom"):
        host, port = target(path, workload).split(":")
        t0 = time.monotonic()
        for _ in range(self.args.dicom_repeat):
            r = self.client.run(self.pinned("peers", [program("env"), "TCP_NODELAY=1", program("storescu"), "-aet", "BENCH-SCU", "-aec", DICOM_AE,
                                 "+sd", host, port, str(self.study)]), timeout=120, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"storescu via {path} failed: {r.stdout}{r.stderr}")
        elapsed = time.monotonic() - t0
        if workload == "dicomstore":
            stored = list(self.stored.iterdir())
            if len(stored) != self.args.images:
                raise RuntimeError(f"storescp stored {len(stored)} of {self.args.images} images via {path}")
            for f in stored:
                f.unlink()
        return {workload: self.args.images * self.args.dicom_repeat / elapsed}

    def make_study(self):
        self.study = self.tmp / "study"
        self.study.mkdir()
        for i in range(self.args.images):
            dicom_files.make(self.study / f"img{i:04}.dcm", i + 1, study="77", rows=512, cols=512)

    def rounds(self):
        run = {
            "bulk1": lambda p: self.bulk(p, 1),
            "bulk8": lambda p: self.bulk(p, 8),
            "rate": self.rate,
            "hl7": lambda p: self.mllp(p, 16),
            "hl7one": lambda p: self.mllp(p, 1),
            "dicom": self.dicom,
            "dicomstore": lambda p: self.dicom(p, "dicomstore"),
        }
        only = self.args.only.split(",") if self.args.only else WORKLOADS
        workloads = [(w, run[w]) for w in WORKLOADS if w in only]
        for r in range(self.args.rounds):
            log(f"round {r + 1}/{self.args.rounds}")
            for i, (name, fn) in enumerate(workloads):
                k = (r + i) % len(self.paths)
                for path in self.paths[k:] + self.paths[:k]:
                    self.measure(name, path, lambda: fn(path))

    # -- memory -----------------------------------------------------------------------

    def memory(self):
        """Peak RSS of a fresh proxy holding many idle established connections."""
        # A proxied connection needs two descriptors in the proxy: as many as HAProxy's
        # maxconn allows within the open-file limit, at most --idle.
        want = min(self.args.idle, haproxy_maxconn() - 20)
        self.mem_target = want
        self.mem = {}
        port = {"rate": (MEM_PORT, PORTS["rate"])}
        for name, starter in (("haproxy", self.start_haproxy), ("lbcore", self.start_lbcore)):
            proc = starter(port, "mem")
            try:
                wait_listening(self.lb, MEM_PORT)
            except AssertionError:
                raise RuntimeError(f"{name} did not start: " + (self.tmp / f"{name}-mem.log").read_text()) from None
            time.sleep(0.5)
            base = status_kb(proc.pid, "VmRSS")
            hold = self.client.spawn(self.pinned("peers", [str(BIN / "lbbench"), *self.peer_threads(), "hold", f"{LB_IP}:{MEM_PORT}", "--count", str(want)]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = hold.stdout.readline()
            established = json.loads(line)["established"] if line else 0
            time.sleep(0.5)
            hwm, rss = status_kb(proc.pid, "VmHWM"), status_kb(proc.pid, "VmRSS")
            hold.stdin.close()
            hold.wait(timeout=30)
            self.lab.stop(proc)
            self.mem[name] = {"established": established, "hwm_kb": hwm, "rss_kb": rss, "base_kb": base}
            log(f"  memory {name:8} established={established} base={base} kB VmHWM={hwm} kB")
            wait_for(lambda: not listening(self.lb, MEM_PORT), 10, what="the memory-test proxy to stop")

    def close(self):
        self.lab.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.stored, ignore_errors=True)


# -- the report -----------------------------------------------------------------------

ROWS = [
    # key, workload label ({images}: the study's size), metric label, higher_is_better, format
    ("bulk1", "Bulk, 1 stream", "Gbit/s", True, "{:.2f}"),
    ("bulk8", "Bulk, 8 streams", "Gbit/s", True, "{:.2f}"),
    ("rate", "Connection rate, 64 clients", "conn/s", True, "{:.0f}"),
    ("rate_p50", "  connect-to-reply p50", "ms", False, "{:.3f}"),
    ("rate_p99", "  connect-to-reply p99", "ms", False, "{:.3f}"),
    ("hl7", "HL7 MLLP, 16 connections", "msg/s", True, "{:.0f}"),
    ("hl7_p50", "  round trip p50", "ms", False, "{:.3f}"),
    ("hl7_p99", "  round trip p99", "ms", False, "{:.3f}"),
    ("hl7one", "HL7 MLLP, 1 connection", "msg/s", True, "{:.0f}"),
    ("hl7one_p50", "  round trip p50", "ms", False, "{:.3f}"),
    ("hl7one_p99", "  round trip p99", "ms", False, "{:.3f}"),
    ("dicom", "DICOM C-STORE, {images} images", "images/s", True, "{:.1f}"),
    ("dicomstore", "DICOM C-STORE, {images} images stored", "images/s", True, "{:.1f}"),
]


def paired_ratios(bench, key, path, other, higher):
    """Per-round advantages of `path` over `other`: both ran seconds apart in each round,
    so drift in the machine's speed (other tenants, clocks) cancels within a pair."""
    a, b = bench.samples.get((key, path)), bench.samples.get((key, other))
    if not a or not b or len(a) != len(b):
        return []
    return [(x / y) if higher else (y / x) for x, y in zip(a, b) if x and y]


def spread(ratios):
    """(median, lower quartile, upper quartile) of per-round ratios."""
    if len(ratios) < 2:
        return (ratios[0],) * 3
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def ratio_cell(ratios):
    if not ratios:
        return "–"
    m, q1, q3 = spread(ratios)
    return f"{m:.2f} ({q1:.2f}–{q3:.2f})"


def ratio(a, b, higher):
    if not a or not b:
        return "–"
    return f"{(a / b) if higher else (b / a):.2f}"


def table(bench):
    med = {k: statistics.median(v) for k, v in bench.samples.items()}
    paths = bench.paths
    names = {"direct": "Direct", "haproxy": "HAProxy", "lbcore": "lbcore", "lbcore-b": "lbcore-b"}
    pairs = [("lbcore", "haproxy"), ("lbcore", "direct")]
    if "lbcore-b" in paths:
        pairs.append(("lbcore-b", "lbcore"))
    head = ["Workload", "Unit"] + [names[p] for p in paths] + [f"{names[a]} vs {names[b]}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for key, label, unit, higher, fmt in ROWS:
        label = label.format(images=bench.args.images)
        vals = [med.get((key, p)) for p in paths]
        if all(v is None for v in vals):
            continue
        cells = [fmt.format(v) if v is not None else "–" for v in vals]
        ratios = [ratio_cell(paired_ratios(bench, key, a, b, higher)) for a, b in pairs]
        lines.append(f"| {label} | {unit} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    if getattr(bench, "mem", None) and len(bench.mem) == 2:
        h, lb = bench.mem.get("haproxy"), bench.mem.get("lbcore")
        n = bench.mem_target
        pad = " – |" * (len(pairs) - 2 + len(paths) - 3)
        lines.append(f"| Idle connections held (of {n:,}) | conns | – | {h['established']:,} | {lb['established']:,} |{pad} "
                     f"{ratio(lb['established'], h['established'], True)} | – |")
        lines.append(f"| Peak RSS (VmHWM) at those connections | MB | – | {h['hwm_kb'] / 1024:.1f} | {lb['hwm_kb'] / 1024:.1f} |{pad} "
                     f"{ratio(lb['hwm_kb'], h['hwm_kb'], False)} | – |")
    return "\n".join(lines)


def verdict(ratios, goal):
    """Whether per-round ratios reach `goal`: by the median, and whether the middle half
    of the rounds agrees (a median that passes with rounds on both sides is a tie)."""
    m, q1, q3 = spread(ratios)
    if q1 >= goal:
        return "met"
    if m >= goal:
        return "met by the median; some rounds below"
    if q3 >= goal:
        return "not met by the median; some rounds above"
    return "not met"


def targets_text(bench):
    """The issue's targets, checked against this run's numbers."""
    label = {key: name.strip().format(images=bench.args.images) for key, name, *_ in ROWS}
    higher = {key: h for key, _, _, h, _ in ROWS}
    lines = ["| Target | This run | Verdict |", "|---|---|---|"]

    def row(goal_text, goal, key, vs):
        rs = paired_ratios(bench, key, "lbcore", vs, higher[key])
        if rs:
            name = label[key] if not key.endswith(("_p50", "_p99")) else f"{label[key.rsplit('_', 1)[0]]}, {label[key]}"
            lines.append(f"| {goal_text}: {name} | {ratio_cell(rs)} | {verdict(rs, goal)} |")

    for key, *_ in ROWS:
        row("lbcore ≥ HAProxy", 1.0, key, "haproxy")
    for key in ("bulk1", "bulk8"):
        row("Bulk ≥ 0.70 of direct", 0.70, key, "direct")
    for key in ("dicom", "dicomstore"):
        row("DICOM ≥ 0.95 of direct", 0.95, key, "direct")
    mem = getattr(bench, "mem", None) or {}
    if "lbcore" in mem:
        mb = mem["lbcore"]["hwm_kb"] / 1024
        lines.append(f"| lbcore peak RSS < 64 MB at 10,000 idle connections | {mb:.1f} MB at "
                     f"{mem['lbcore']['established']:,} | {'met' if mb < 64 else 'not met'} |")
    return "\n".join(lines)


def cpu_table(bench):
    names = {"bulk1": "Bulk, 1 stream", "bulk8": "Bulk, 8 streams", "rate": "Connection rate",
             "hl7": "HL7 MLLP, 16 connections", "hl7one": "HL7 MLLP, 1 connection", "dicom": "DICOM C-STORE",
             "dicomstore": "DICOM C-STORE, stored"}
    proxies = [p for p in bench.paths if p != "direct"]
    # lbcore's idle-priority spinners (--busy-poll-us), where they ran at all
    spinning = [p for p in proxies if any(any(v) for (_, q), v in bench.spin.items() if q == p)]
    head = ["Workload"] + [f"{p} CPU" for p in proxies] + [f"{p} busy-poll" for p in spinning]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    pct = lambda v: f"{statistics.median(v) * 100:.0f}%" if v else "–"  # noqa: E731
    for w, label in names.items():
        if not any(bench.cpu.get((w, p)) for p in proxies):
            continue
        cells = [pct(bench.cpu.get((w, p))) for p in proxies]
        cells += [pct(bench.spin.get((w, p))) for p in spinning]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samples_text(bench):
    out = []
    for key, label, unit, _, fmt in ROWS:
        for p in bench.paths:
            v = bench.samples.get((key, p))
            if v:
                out.append(f"{key:9} {p:8} " + " ".join(fmt.format(x) for x in v))
    return "\n".join(out)


def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    haproxy = subprocess.run([program("haproxy"), "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    dcmtk = subprocess.run([program("storescu"), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "cores": os.cpu_count(), "cpu": model, "kernel": platform.release(), "memory_mb": mem,
        "haproxy": haproxy, "dcmtk": dcmtk.strip("$ "),
    }


def write_doc(bench, out, m, started, duration, load):
    args = bench.args
    doc = f"""# Benchmarks: lbcore's Layer 7 proxy, HAProxy and a direct connection

Written by `tests/bench/run` from the run of {started:%Y-%m-%d %H:%M} UTC (took {duration / 60:.1f} min).
Do not edit the numbers by hand: run the benchmark again.

## Machine

- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_mb']} MB
- Kernel: Linux {m['kernel']}
- {m['haproxy']}
- dcmtk: {m['dcmtk']}
- Load average when the run started: {load}

## Reproduce

```
tests/bench/run            # --rounds {args.rounds} --secs {args.secs} --images {args.images} --idle {args.idle} --placement {args.placement}
```

## Results

Values are medians of {args.rounds} interleaved rounds ({args.secs:g} s per throughput
measurement). Ratios are lbcore's advantage: for throughput lbcore / other, for latency
and memory other / lbcore, so 1.00 or more means lbcore is as good or better. Each ratio
is the median of the per-round ratios: the paths of one round ran seconds apart, while
this machine's speed drifts by up to 2x over minutes (it is a VM with neighbours; see the
samples below), so a ratio of medians would compare different moments. In brackets:
the lower and upper quartile of the per-round ratios, the spread a reader should allow
before calling a difference real.

{table(bench)}

CPU used by the proxy process during each measurement (median; 100% = one core):

{cpu_table(bench)}

## Targets

The targets of the benchmark's issue, checked against the ratios above (median and
quartiles of the per-round ratios):

{targets_text(bench)}

## Setup

- Network namespaces from `tests/lab/netns.py`: client ({CLIENT_IP}), load balancer
  ({LB_IP}) and server ({SERVER_IP}), each attached to one bridge by a veth pair. The
  direct path is client → server; the proxied paths are client → lb → server on the same
  bridge. Nothing leaves the namespaces.
- Servers: `lbbench serve` (bulk sink, request/reply, MLLP ACK) and
  `storescp --ignore` (receives every byte, writes nothing) in the server host. Clients:
  `lbbench` and `storescu` in the client host. The same peers serve all three paths.
- HAProxy: Debian's package, TCP mode, `nbthread {len(bench.cpus['proxy'])}`, `option splice-request` and
  `option splice-response` with `tune.pipesize 262144` (the same pipe size as lbcore;
  faster than `splice-auto` on bulk in trial runs here, and no slower elsewhere),
  `option tcpka`, `maxconn` from the file-descriptor limit, `maxpipes {HAPROXY_MAXPIPES}`,
  no logging, no checks.
- lbcore: `target/release/lbcore`, one Layer 7 service per workload, `check = {{ kind = "none" }}`,
  round robin to the single server, log level `warn`; its own runtime settings (one
  worker thread per core it may run on; `--busy-poll-us` off, as by default, like
  HAProxy's `busy-polling`).
{placement_text(bench)}
- Sysctls in every namespace: `tcp_tw_reuse=1`, `ip_local_port_range=1024 65535`
  (the proxies' listening ports, 10000-42000, reserved), `somaxconn=4096`.
- Bulk: N connections write 256 KiB buffers for {args.secs:g} s, half-close, and the server
  answers with the bytes it received; Gbit/s = bytes received / wall time.
- Connection rate: 64 concurrent clients, each a loop of connect, 64-byte request,
  512-byte reply, close; latency from before connect() to the last reply byte.
- HL7: 16 long-lived connections, each a loop of one ADT^A01 (≈280 bytes, MLLP framed)
  and waiting for its ACK. "1 connection" is one such loop alone, as one interface
  engine feeding one receiver sends: every message waits for the previous ACK, so it
  measures the round trip a proxy adds rather than its capacity.
- DICOM: `storescu +sd` ({args.dicom_repeat} runs per measurement) sends {args.images} Secondary Capture images of 512×512 pixels
  (≈256 KiB each, written by `tests/lab/dicom_files.py`) over one association to
  `storescp --ignore`; images/s = images / wall time of storescu. "stored" sends them
  to a second `storescp` that writes each image to a file, as a PACS does (into
  `/dev/shm`, so that no disk's speed enters; the bench checks that all {args.images} arrived
  and deletes them after each measurement). Both dcmtk peers run
  with `TCP_NODELAY=1` (Debian's dcmtk leaves Nagle on, and then every image waits
  on delayed ACKs: ~16 images/s on every path, which measures timers, not the path).
- Memory: a fresh proxy of each kind, {bench.mem_target:,} idle connections opened through it (one
  request/reply each, so both legs are established) and held; peak RSS is VmHWM. The
  target is 10,000 but the container's hard limit on open files
  ({resource.getrlimit(resource.RLIMIT_NOFILE)[1]}) caps a proxy at about half that many
  connections (two sockets each), and root here cannot raise it.

Samples (one per round, in round order):

```
{samples_text(bench)}
```
"""
    out.write_text(doc)


def placement_text(bench):
    if bench.args.placement == "dedicated" and bench.cpus["proxy"] != bench.cpus["peers"]:
        cpus = lambda role: ", ".join(map(str, bench.cpus[role]))  # noqa: E731
        return f"""- CPU placement (`--placement dedicated`): the proxies run on core(s) {cpus('proxy')}, the
  clients and servers on core(s) {cpus('peers')} (`taskset`), on every path. This is the
  deployment being modelled: the load balancer is a VM of its own, and the modality and
  the PACS are other machines, so a proxy's CPU cost is not taken from the peers; the
  direct path's peers have the same cores as on the proxied paths. The CPU table shows
  how busy each proxy's core(s) were. `--placement shared` pins nothing instead."""
    return """- CPU placement (`--placement shared`): nothing is pinned. The client, server and
  proxy share the machine's cores; a proxy's CPU cost is taken from the peers and shows in
  the ratios against direct; the CPU table shows each proxy's own cost."""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--secs", type=float, default=2.0)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--dicom-repeat", type=int, default=2, help="storescu runs (of the whole study) per measurement")
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--only", default="", help=f"comma-separated: {','.join(WORKLOADS)},memory (debugging; implies --no-doc)")
    ap.add_argument("--placement", choices=("dedicated", "shared"), default="dedicated",
                    help="dedicated: proxies on the upper half of the cores, peers on the lower half; "
                         "shared: nothing pinned")
    ap.add_argument("--compare-lbcore", default="", metavar="ARGS",
                    help="also run a second lbcore with these extra options (tuning; implies --no-doc)")
    ap.add_argument("--compare-binary", default="", metavar="PATH",
                    help="the second lbcore is this binary (another build; implies --no-doc)")
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md",
                    help="where a whole run writes its report (default: docs/benchmarks.md)")
    args = ap.parse_args()
    # Refused before minutes of measuring, not after.
    for name in ("rounds", "images", "dicom_repeat", "idle"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.secs <= 0:
        ap.error("--secs must be more than 0")
    unknown = set(filter(None, args.only.split(","))) - {*WORKLOADS, "memory"}
    if unknown:
        ap.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
    if not args.no_doc and not args.doc.resolve().parent.is_dir():
        ap.error(f"--doc: the directory {args.doc.resolve().parent} does not exist")
    if os.geteuid() != 0:
        sys.exit("bench.py: must run as root (network namespaces)")
    started = datetime.datetime.now(datetime.timezone.utc)
    load = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.monotonic()
    bench = Bench(args)
    try:
        bench.make_study()
        bench.start()
        bench.rounds()
        if not args.only or "memory" in args.only.split(","):
            log("memory")
            bench.memory()
    finally:
        bench.close()
    duration = time.monotonic() - t0
    print(table(bench))
    print()
    print(cpu_table(bench))
    print()
    print(targets_text(bench))
    # Only a whole run of the standard three paths may replace the published results.
    if args.only or "lbcore-b" in bench.paths:
        if not args.no_doc:
            log(f"a partial or A/B run: {args.doc} is left as it was")
    elif not args.no_doc:
        write_doc(bench, args.doc, machine(), started, duration, " ".join(load))
        log(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
