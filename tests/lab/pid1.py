"""init's system tests (tests/init): init run as PID 1 of fresh pid, mount, net, uts
and ipc namespaces (unshare), what runs below it read from /proc, and cleanup of
everything a test started.

Its root (`--root`: resolv.conf, the mark-good hook, lbctl) is an empty directory of
the test, so that an init with its network on never writes the host's /etc/resolv.conf.
`netns=NAME` runs it in a network namespace the test made (`ip netns add`, with the
links it wants there) instead of a fresh empty one."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from lab.binaries import BIN_DIR
from lab.programs import program
from lab.wait import wait_for

INIT = BIN_DIR / "init"


def children(pid):
    """Host pids of the children of host pid `pid`."""
    out = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for t in task_dir.iterdir():
            out += [int(x) for x in (t / "children").read_text().split()]
    except OSError:
        pass
    return out


def proc_state(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid):
    """Whether host process `pid` exists and has not ended (a zombie has ended)."""
    return proc_state(pid) not in (None, "Z")


def ns_pid(pid):
    """The pid of host process `pid` inside its innermost pid namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


class Pid1:
    """init running as PID 1 of new pid, mount, net, uts and ipc namespaces."""

    def __init__(self, tmp: Path, services: str, extra=(), console="none", network=False, netns=None):
        self.tmp = tmp
        self.data = tmp / "data"
        self.run = tmp / "run"
        self.root = tmp / "root"
        for d in (self.data, self.run, self.root):
            d.mkdir(exist_ok=True)
        self.services = tmp / "services.toml"
        self.services.write_text(services)
        self.log = tmp / "stderr.log"
        # `ip netns exec` enters the namespace (and mounts a /sys of it), then execs unshare.
        enter = [program("ip"), "netns", "exec", netns] if netns else []
        args = enter + [
            program("unshare"), "--pid", "--fork", "--mount-proc", "--uts", "--ipc",
            *([] if netns else ["--net"]),
            str(INIT), "--root", str(self.root), "--data", str(self.data), "--run", str(self.run),
            "--services", str(self.services), "--console", console,
            "--no-mounts", "--no-modules", "--exit-on-shutdown", "--log-stderr",
        ]
        if not network:
            args.append("--no-network")
        args += list(extra)
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.init_pid = wait_for(lambda: (children(self.proc.pid) or [None])[0],
                                 what="init to start")

    def text(self):
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern, timeout=10.0, count=1):
        return wait_for(lambda: len(re.findall(pattern, self.text())) >= count,
                        timeout, what=f"{pattern!r} in init's log:\n{self.text()}")

    def ctl(self, *words):
        r = subprocess.run([str(INIT), "ctl", "--run", str(self.run), *words],
                           capture_output=True, text=True, timeout=15)
        return json.loads(r.stdout) if r.stdout.strip() else {"ok": False, "error": r.stderr}

    def service(self, name):
        for s in self.ctl("list").get("services", []):
            if s["name"] == name:
                return s
        return None

    def host_pid(self, nspid):
        """Host pid of the namespace's process `nspid`."""
        todo = [self.init_pid]
        while todo:
            p = todo.pop()
            try:
                if ns_pid(p) == nspid:
                    return p
            except OSError:
                continue
            todo += children(p)
        return None

    def live_children(self):
        """Host pids of init's children that have not ended: its services' processes."""
        return [c for c in children(self.init_pid) if alive(c)]

    def wait_new_child(self, old=(), timeout=10.0, interval=0.002):
        """Polls /proc until init has a live child not in `old`; returns its host pid
        and the monotonic time it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            new = [c for c in self.live_children() if c not in old]
            now = time.monotonic()
            if new:
                return new[0], now
            if now > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for a new child of init "
                                     f"(old {list(old)}):\n{self.text()}")
            time.sleep(interval)

    def descendants(self):
        out, todo = [], [self.init_pid]
        while todo:
            p = todo.pop()
            kids = children(p)
            out += kids
            todo += kids
        return out

    def terminate(self, timeout=20):
        os.kill(self.init_pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)  # takes the namespace with it
            except (ProcessLookupError, TypeError):
                pass
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.logf.close()
