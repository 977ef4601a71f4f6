"""The appliance image under QEMU, for tests/image: commands, the VM's serial console,
VMs started with qemu/run, the first-boot wizard and the console menu as the tests
drive them, disk copies, the GRUB environment, the data partition and the slots (written
as the update agent writes them).

The test probe (tests/vmprobe) is how a test sees inside the VM without a test tool in
the image: probe_boot_args() boots the image's own kernel and initramfs with an overlay
archive appended (the probe, and the image's services file with the probe's service
added); Probe is its client; parse_ip_vs() and parse_ip_vs_conn() read the kernel's own
text of the IPVS table, independently of lbcore."""

import json
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.binaries import REPO, binary
from lab.netns import connect_from
from lab.programs import program, script_env
from lab.wait import wait_for

TOP = REPO
IMAGE_DIR = TOP / "target" / "image"
BOOTENV = IMAGE_DIR / "work" / "bootenv" / "release" / "bootenv"

# Lines the image tests report (sizes, guest uptime at "services ready"), printed in
# pytest's summary even when the tests pass and their output is captured.
NOTES = []


def note(line):
    NOTES.append(line)
    print(line)


def run(*cmd, **kw):
    """Runs a command, failing the test with its output when it fails."""
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run([str(c) for c in cmd], **kw)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({e.returncode}):\n{e.stdout}\n{e.stderr}")


class Console:
    """The VM's serial console: a reader thread collects everything the guest prints;
    expect() waits for a pattern in what came after the previous match."""

    def __init__(self, path, log_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = ""
        self.pos = 0
        self.cond = threading.Condition()
        self.log = open(log_path, "w", encoding="utf-8", errors="replace")
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            text = data.decode("utf-8", errors="replace").replace("\r", "")
            with self.cond:
                if not data:
                    self.closed = True
                else:
                    self.buf += text
                    self.log.write(text)
                    self.log.flush()
                self.cond.notify_all()
            if not data:
                return

    def expect(self, pattern, timeout):
        """Waits for regex `pattern` after the last match; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    tail = self.buf[-3000:]
                    why = "console closed" if self.closed else f"{timeout} s passed"
                    pytest.fail(f"waiting for {pattern!r}: {why}; console ended with:\n{tail}")
                self.cond.wait(min(left, 1))

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r")

    def answer(self, prompt, text, timeout=60):
        """Waits for a prompt (a regex ending before ': ') and types the answer."""
        self.expect(prompt + r".*: $|" + prompt + r".*: ", timeout)
        time.sleep(0.05)
        self.send(text)

    def close(self):
        try:
            self.sock.close()
        finally:
            self.log.close()


class Vm:
    """One qemu process started through qemu/run."""

    def __init__(self, workdir, disk, firmware="bios", netns=None, tap=None, extra=()):
        self.workdir = Path(workdir)
        self.sock_path = self.workdir / f"serial-{time.monotonic_ns()}.sock"
        cmd = [
            str(TOP / "qemu" / "run"),
            "--no-build",
            f"--{firmware}",
            "--disk",
            str(disk),
            "--state",
            str(self.workdir / "state"),
            "--serial",
            f"unix:{self.sock_path},server=on,wait=on",
            *(["--tap", tap] if tap else []),
            *extra,
        ]
        if netns:
            cmd = [program("ip"), "netns", "exec", netns, *cmd]
        self.qemu_log = open(self.workdir / "qemu.log", "a")
        # qemu/run finds qemu-system-x86_64 and qemu-img on Debian's PATH only
        self.proc = subprocess.Popen(cmd, stdout=self.qemu_log, stderr=subprocess.STDOUT, env=script_env())
        log, n = self.workdir / "console.log", 1
        while log.exists():  # a later boot of the same test keeps the earlier logs
            n += 1
            log = self.workdir / f"console-{n}.log"
        self.console = Console(self.sock_path, log)
        self.started = time.monotonic()

    def wait_exit(self, timeout):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.console.close()
        self.qemu_log.close()


# The booted appliance as the tests drive it (used by several test files).

GUEST = "10.99.7.10"
PASSWORD = "correct-horse-42"
BOOT_TIMEOUT = 120  # GRUB to the first prompt, under software emulation
READY_TIMEOUT = 150  # wizard done to "services ready" (mkfs of /data, network, lbcore)


def wizard_static(con):
    con.expect(r"=== Medical load balancer: first-boot setup ===", BOOT_TIMEOUT)
    con.answer(r"Network mode \(dhcp/static\)", "static")
    con.answer(r"IPv4 address with prefix or netmask", "10.99.7.300/24")
    con.expect(r"error: .*", 30)  # a malformed address is refused, and asked again
    con.answer(r"IPv4 address with prefix or netmask", f"{GUEST}/24")
    con.answer(r"Gateway \(empty for none\)", "10.99.7.1")
    con.answer(r"DNS servers, comma-separated \(empty for none\)", "")
    con.answer(r"Hostname", "lbtest")
    con.answer(r"Admin password \(at least 8 characters\)", PASSWORD)
    con.answer(r"Repeat admin password", PASSWORD)
    con.expect(r"Summary:", 30)
    con.answer(r"Apply these settings\? \(yes/no\)", "yes")
    con.expect(r"Settings saved\.", 60)


def services_ready(con, label):
    m = con.expect(r"services ready in (\d+) ms \(uptime ([\d.]+) s\)", READY_TIMEOUT)
    note(f"{label}: services ready at guest uptime {m.group(2)} s (init's share {m.group(1)} ms)")
    return m


def ping(netns, timeout=60, address=GUEST):
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(
            [program("ip"), "netns", "exec", netns, program("ping"), "-c", "1", "-W", "2", address],
            capture_output=True, text=True,
        )
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} does not answer ping from {netns}:\n{r.stdout}{r.stderr}")
        time.sleep(1)


def choose(con, choice):
    """Picks a menu entry: an empty line redraws the status screen and its menu first
    (the prompt may have been printed long before)."""
    con.send("")
    con.answer(r"Choice \(1-6\)", choice)


# Disks.

def disk_copy(image, tmp_path, name="medlb.raw"):
    """A private sparse copy of the built raw disk, for tests that change it."""
    dst = tmp_path / name
    run(program("cp"), "--sparse=always", image / "medlb.raw", dst)
    return dst


def bootenv(disk, *args):
    return run(BOOTENV, "--device", disk, *args).stdout


def overlay_bootenv(vm_workdir, disk):
    """The GRUB environment as the VM left it (in qemu/run's overlay of `disk`)."""
    overlay = Path(vm_workdir) / "state" / f"disk-{Path(disk).name}.qcow2"
    flat = Path(vm_workdir) / "flattened.raw"
    run(program("qemu-img"), "convert", "-U", "-O", "raw", overlay, flat)
    try:
        env = bootenv(flat, "show")
    finally:
        flat.unlink()
    return dict(line.split("=", 1) for line in env.splitlines())


def gpt_partition(disk, name):
    """(offset, size) in bytes of the GPT partition called `name`."""
    with open(disk, "rb") as f:
        f.seek(512)
        hdr = f.read(512)
        lba, count, size = struct.unpack_from("<QII", hdr, 72)
        f.seek(lba * 512)
        table = f.read(count * size)
    for i in range(count):
        e = table[i * size : (i + 1) * size]
        if e[56:128].decode("utf-16-le").rstrip("\0") == name:
            first, last = struct.unpack_from("<QQ", e, 32)
            return first * 512, (last - first + 1) * 512
    raise AssertionError(f"no partition {name}")


def preload_data(disk, tmp_path, files):
    """Makes the data partition an ext4 "LBDATA" file system holding `files`
    ({relative path: text}), as init would have made it at first boot."""
    root = tmp_path / "data"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    offset, size = gpt_partition(disk, "LBDATA")
    run(program("mke2fs"), "-q", "-F", "-t", "ext4", "-L", "LBDATA", "-E", f"offset={offset}",
        "-d", root, disk, f"{size // 1024}k")


def write_slot(disk, tmp_path, slot, files):
    """Writes slot `slot`'s partition of `disk` as the update agent will: a new ext2
    file system made with `mke2fs -d DIR` holding `files` ({name: source path}), the
    other partitions untouched."""
    tree = tmp_path / f"slot_{slot}.tree"
    tree.mkdir()
    for name, src in files.items():
        run(program("cp"), src, tree / name)
    offset, size = gpt_partition(disk, f"slot_{slot}")
    part = tmp_path / f"slot_{slot}.ext2"
    run(program("mke2fs"), "-q", "-t", "ext2", "-L", f"slot_{slot}", "-d", tree, part, f"{size // 1024}k")
    run(program("dd"), f"if={part}", f"of={disk}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
        "conv=notrunc,sparse", "status=none")
    part.unlink()


def mkcpio(tree, out):
    """A newc archive of directory `tree` written by the image's own image/mkcpio."""
    with open(out, "wb") as f:
        subprocess.run([program("python3"), str(TOP / "image" / "mkcpio"), str(tree)], stdout=f, check=True)
    return out


# Booting the image's kernel and initramfs directly (qemu/run --kernel/--initrd/--append)
# with a test overlay: the probe, a test-only agent (tests/vmprobe), never in the image.

PROBE_PORT = 7999


def kernel_cmdline(slot="a"):
    """The kernel command line exactly as image/grub/grub.cfg gives it for `slot`."""
    cfg = (TOP / "image" / "grub" / "grub.cfg").read_text()
    m = re.search(r"^\s*linux \S+/vmlinuz (.*)$", cfg, re.M)
    assert m and m.group(1).endswith("lb.slot=$1"), "grub.cfg's linux line changed"
    return m.group(1).replace("$1", slot)


def initrd_file(image, name):
    """One file of the built slot's initramfs (`name` as cpio lists it), as text."""
    r = subprocess.run(
        f"{program('zstd')} -dc {image / 'slot' / 'initrd.img'} | {program('cpio')} -i --quiet --to-stdout {name}",
        shell=True, check=True, capture_output=True, text=True)
    assert r.stdout, f"{name} is not in the image's initramfs"
    return r.stdout


def probe_service(extra=""):
    return f'''
# test overlay (tests/lab/vm.py): the probe, never part of the image
[[service]]
name = "vmprobe"
command = "/usr/bin/vmprobe"
args = ["--port", "{PROBE_PORT}"]
restart = "always"
{extra}'''


def with_probe_port(services):
    """The image's services.toml with the probe's port among lbcore's management ports."""
    firewall_arg = '"--firewall", "{data}/config/firewall.toml"'
    assert firewall_arg in services, "the image's lbcore no longer keeps the firewall"
    ports = f', "--management-port", "9443", "--management-port", "{PROBE_PORT}"'
    return services.replace(firewall_arg, firewall_arg + ports)


def probe_initrd(image, workdir, services_extra=None):
    """The slot's initramfs with an overlay archive appended (Linux unpacks both, the
    later files replacing the earlier ones): the probe binary, and the image's own
    /etc/init/services.toml (taken from the built initramfs) with the probe's
    [[service]] appended (`services_extra`: text instead of the default entry)."""
    workdir = Path(workdir)
    tree = workdir / "overlay"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "etc" / "init").mkdir(parents=True)
    for d in (tree / "usr", tree / "usr" / "bin", tree / "etc", tree / "etc" / "init"):
        d.chmod(0o755)
    run(program("cp"), binary("vmprobe"), tree / "usr" / "bin" / "vmprobe")
    services = initrd_file(image, "etc/init/services.toml")
    # the appliance's firewall lets the probe in as a management port (from the lockdown
    # networks, or from anywhere with lockdown off), beside the web UI's
    services = with_probe_port(services)
    (tree / "etc" / "init" / "services.toml").write_text(
        services + (probe_service() if services_extra is None else services_extra))
    overlay = mkcpio(tree, workdir / "overlay.cpio")
    combined = workdir / "initrd-with-probe.img"
    with open(combined, "wb") as out:
        base = (image / "slot" / "initrd.img").read_bytes()
        # the kernel takes the next archive only at a 4-byte offset from the end of a
        # compressed one: zeros in between are skipped
        out.write(base + b"\0" * (-len(base) % 4))
        out.write(overlay.read_bytes())
    return combined


def probe_boot_args(image, workdir, slot="a", services_extra=None):
    """qemu/run options booting the image's kernel with the probe's initramfs."""
    return ("--kernel", str(image / "slot" / "vmlinuz"),
            "--initrd", str(probe_initrd(image, workdir, services_extra)),
            "--append", kernel_cmdline(slot))


class _Ns:
    def __init__(self, ns):
        self.ns = ns


def in_netns(ns):
    """Test namespace `ns` (a name) as a host that lab.webapi.ApiClient and
    lab.netns.connect_from connect from."""
    return _Ns(ns)


class Probe:
    """The client of tests/vmprobe in the booted VM, from test namespace `ns`."""

    def __init__(self, ns, address=GUEST, port=PROBE_PORT):
        self.ns, self.address, self.port = ns, address, port

    def request(self, line, body=None, timeout=30):
        s = connect_from(_Ns(self.ns), self.address, self.port, timeout=timeout)
        with s:
            s.sendall(line.encode() + b"\n" + (body or b""))
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        head, _, rest = b"".join(chunks).partition(b"\n")
        if head != b"ok":
            raise AssertionError(f"vmprobe {line!r}: {head.decode(errors='replace')}")
        return rest

    def wait(self, timeout=120):
        """Waits until the probe answers (the VM's network is up)."""
        def up():
            try:
                return self.request("read /proc/uptime", timeout=3)
            except (OSError, AssertionError):
                return None
        wait_for(up, timeout, interval=1, what=f"the probe to answer on {self.address}:{self.port}")

    def read(self, path):
        return self.request(f"read {path}").decode()

    def list(self, path):
        return self.request(f"list {path}").decode().split()

    def statvfs(self, path):
        return {k: int(v) for k, v in (line.split("=") for line in self.request(f"statvfs {path}").decode().split())}

    def write(self, path, text):
        self.request(f"write {path}", text.encode())

    def init(self, line):
        """init's answer (JSON) to one control-socket line."""
        return json.loads(self.request(f"init {line}"))

    def service(self, name):
        return next(s for s in self.init("list")["services"] if s["name"] == name)

    def ipvs(self, *words):
        return self.request("ipvs " + " ".join(map(str, words))).decode()

    def ip_vs(self):
        """The kernel's IPVS table as /proc/net/ip_vs shows it (parse_ip_vs)."""
        return parse_ip_vs(self.read("/proc/net/ip_vs"))

    def ip_vs_conn(self):
        return parse_ip_vs_conn(self.read("/proc/net/ip_vs_conn"))

    def ipvs_dump(self):
        """The table over generic netlink, read by the probe's own decoder (not
        lbcore's), with what /proc/net/ip_vs does not show: the thresholds."""
        return parse_ipvs_dump(self.ipvs("dump"))


def _hexaddr(text):
    """'0A63074A:0068' (the kernel's %08X:%04X of an IPv4 address) -> '10.99.7.74:104'."""
    addr, port = text.rsplit(":", 1)
    if addr.startswith("["):
        return f"{addr}:{int(port, 16)}"
    return f"{socket.inet_ntoa(bytes.fromhex(addr))}:{int(port, 16)}"


def parse_ip_vs(text):
    """/proc/net/ip_vs (the kernel's ip_vs_info_seq_show) as
    {"TCP 10.99.7.70:104": {"scheduler", "persistent" (seconds or None), "netmask"
    (dotted, or None), "dests": {"10.99.7.31:104": {"forward" ("Route", "Masq", ...),
    "weight", "active", "inactive"}}}}."""
    lines = text.splitlines()
    assert lines and lines[0].startswith("IP Virtual Server version"), text
    table, current = {}, None
    for line in lines[3:]:
        f = line.split()
        if not f:
            continue
        if f[0] == "->":
            current["dests"][_hexaddr(f[1])] = {
                "forward": f[2], "weight": int(f[3]), "active": int(f[4]), "inactive": int(f[5])}
            continue
        proto, key, sched, rest = f[0], f[1], f[2], f[3:]
        name = f"FWM {int(key, 16)}" if proto == "FWM" else f"{proto} {_hexaddr(key)}"
        if rest[:1] == ["ops"]:
            rest = rest[1:]
        persistent = netmask = None
        if rest[:1] == ["persistent"]:
            persistent = int(rest[1])
            netmask = socket.inet_ntoa(bytes.fromhex(rest[2])) if len(rest[2]) == 8 else rest[2]
        current = table[name] = {"scheduler": sched, "persistent": persistent, "netmask": netmask, "dests": {}}
    return table


def parse_ip_vs_conn(text):
    """/proc/net/ip_vs_conn: [{"proto", "client", "vip", "dest", "state", "expires"}]."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 9:
            continue
        out.append({"proto": f[0], "client": _hexaddr(f"{f[1]}:{f[2]}"), "vip": _hexaddr(f"{f[3]}:{f[4]}"),
                    "dest": _hexaddr(f"{f[5]}:{f[6]}"), "state": f[7], "expires": int(f[8])})
    return out


def parse_ipvs_dump(text):
    """The probe's `ipvs dump`: {"TCP VIP:PORT": {"scheduler", "persistent", "netmask",
    "dests": {"RIP:PORT": {"forward", "weight", "upper", "lower", "active", "inactive"}}}}."""
    table, current = {}, None
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "->":
            d = {"forward": f[2]}
            d.update((k, int(v)) for k, v in (w.split("=") for w in f[3:]))
            current["dests"][f[1]] = d
            continue
        kv = dict(w.split("=", 1) for w in f[3:])
        current = table[f"{f[0]} {f[1]}"] = {
            "scheduler": f[2], "persistent": None if kv.get("persistent", "-") == "-" else int(kv["persistent"]),
            "netmask": kv.get("netmask"), "dests": {}}
    return table


def kernel_hz(image):
    """CONFIG_HZ of the image's kernel, from the Debian package's own config file
    (/proc/net/ip_vs gives a persistence timeout in jiffies)."""
    configs = list((image / "work" / "kernel" / "root" / "boot").glob("config-*"))
    assert len(configs) == 1, configs
    m = re.search(r"^CONFIG_HZ=(\d+)$", configs[0].read_text(), re.M)
    return int(m.group(1))
