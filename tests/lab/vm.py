"""The appliance image under QEMU, for tests/image: commands, the VM's serial console,
VMs started with qemu/run, the first-boot wizard and the console menu as the tests
drive them, disk copies, the GRUB environment and the data partition."""

import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.binaries import REPO
from lab.programs import program, script_env

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
        self.console = Console(self.sock_path, self.workdir / "console.log")
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


def ping(netns, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(
            [program("ip"), "netns", "exec", netns, program("ping"), "-c", "1", "-W", "2", GUEST],
            capture_output=True, text=True,
        )
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{GUEST} does not answer ping from {netns}:\n{r.stdout}{r.stderr}")
        time.sleep(1)


def choose(con, choice):
    """Picks a menu entry: an empty line redraws the status screen and its menu first
    (the prompt may have been printed long before)."""
    con.send("")
    con.answer(r"Choice \(1-5\)", choice)


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
