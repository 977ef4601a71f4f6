"""Test hosts in network namespaces: a switch (a bridge in its own namespace) and hosts
attached to it by veth pairs, each with a private test address.

Everything a Lab creates carries the test process's pid in its name, so that runs in
parallel do not collide, and Lab.close() removes exactly what it made: the processes it
started (by their own process group) and its namespaces. Used by tests/lbcore,
tests/image/test_layer4 and tests/bench.
"""

import os
import signal
import subprocess

from lab.programs import program

IP = program("ip")


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Host:
    def __init__(self, lab, name, ns, address):
        self.lab = lab
        self.name = name
        self.ns = ns
        self.address = address

    def cmd(self, args):
        return [IP, "netns", "exec", self.ns] + list(args)

    def run(self, args, check=True, timeout=60, **kw):
        return run(self.cmd(args), check=check, timeout=timeout, **kw)

    def spawn(self, args, **kw):
        """Starts a long-running process in this host; the lab kills it at close."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.cmd(args), start_new_session=True, **kw)
        self.lab.processes.append(p)
        return p


class Lab:
    def __init__(self, tag, subnet="10.77.0"):
        self.tag = f"{tag}{os.getpid() % 100000}"
        self.subnet = subnet
        self.hosts = {}
        self.namespaces = []
        self.processes = []
        self.switch = f"{self.tag}-sw"
        self._add_ns(self.switch)
        run([IP, "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run([IP, "-n", self.switch, "link", "set", "br0", "up"])

    def _add_ns(self, ns):
        run([IP, "netns", "add", ns])
        self.namespaces.append(ns)
        run([IP, "-n", ns, "link", "set", "lo", "up"])

    def add_host(self, name, last_octet):
        ns = f"{self.tag}-{name}"
        self._add_ns(ns)
        address = f"{self.subnet}.{last_octet}"
        inner, outer = f"h{len(self.hosts)}", f"p{self.tag[-6:]}{len(self.hosts)}"[:15]
        run([IP, "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", self.switch])
        run([IP, "-n", self.switch, "link", "set", outer, "master", "br0", "up"])
        run([IP, "-n", ns, "link", "set", inner, "name", "eth0"])
        run([IP, "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        run([IP, "-n", ns, "link", "set", "eth0", "up"])
        host = Host(self, name, ns, address)
        self.hosts[name] = host
        return host

    def stop(self, process, sig=signal.SIGTERM, timeout=5):
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)

    def close(self):
        for p in reversed(self.processes):
            try:
                self.stop(p, timeout=3)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            run([IP, "netns", "del", ns], check=False)


_libc = None


def _setns(fd):
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    CLONE_NEWNET = 0x40000000
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def connect_from(host, address, port, timeout=5.0):
    """A TCP connection made from inside `host`'s network namespace. Only the calling
    thread switches namespace, and only for the socket() and connect() calls."""
    import socket
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.create_connection((address, port), timeout=timeout)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def socket_in(host, family=None, kind=None):
    """A socket made inside `host`'s network namespace (a socket stays in the namespace
    it was made in): for UDP probes and anything connect_from does not cover."""
    import socket
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family or socket.AF_INET, kind or socket.SOCK_DGRAM)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
