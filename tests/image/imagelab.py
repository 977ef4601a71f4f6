"""Helpers of the appliance image tests (tests/image): commands, the VM's serial
console, VMs started with qemu/run, disk copies and the GRUB environment."""

import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LB_BIN_DIR", TOP / "target" / "release"))
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
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.qemu_log = open(self.workdir / "qemu.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=self.qemu_log, stderr=subprocess.STDOUT)
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


def disk_copy(image, tmp_path, name="medlb.raw"):
    """A private sparse copy of the built raw disk, for tests that change it."""
    dst = tmp_path / name
    run("cp", "--sparse=always", image / "medlb.raw", dst)
    return dst


def bootenv(disk, *args):
    return run(BOOTENV, "--device", disk, *args).stdout


def overlay_bootenv(vm_workdir, disk):
    """The GRUB environment as the VM left it (in qemu/run's overlay of `disk`)."""
    overlay = Path(vm_workdir) / "state" / f"disk-{Path(disk).name}.qcow2"
    flat = Path(vm_workdir) / "flattened.raw"
    run("qemu-img", "convert", "-U", "-O", "raw", overlay, flat)
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
    run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "LBDATA", "-E", f"offset={offset}",
        "-d", root, disk, f"{size // 1024}k")
