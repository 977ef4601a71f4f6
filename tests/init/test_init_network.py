"""Network apply inside network namespaces made by the test: addresses, MTU,
routes (read back as the kernel has them), idempotence, changes applied as a diff,
VLAN and bond where the kernel supports them, and DHCP against a real dnsmasq in a
peer namespace: lease obtained, renewed at T1, released; rebinding at T2 with another
server when the first is gone; the address removed when the lease ends, and a lease
again when a server is back. The times are the server's (its ACKs as the test read
them) and the kernel's (the address on eth0, polled), against the lease, T1 and T2
the test gave the server (dnsmasq's own lease is at least 2 minutes; option 51 gives
the client a shorter one)."""

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from lab.pid1 import INIT
from lab.programs import program
from lab.wait import wait_for

IP = program("ip")


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


class Netns:
    """Two namespaces joined by a veth pair: 'a' (the appliance, link eth0) and 'p'
    (the peer, link peer0)."""

    def __init__(self, tag):
        base = f"lbi{os.getpid()}{tag}"
        self.a, self.p = base + "a", base + "p"
        sh(IP, "netns", "add", self.a)
        sh(IP, "netns", "add", self.p)
        sh(IP, "-n", self.a, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", self.p)
        sh(IP, "-n", self.p, "link", "set", "peer0", "up")
        sh(IP, "-n", self.p, "link", "set", "lo", "up")

    def apply(self, cfg_path, *extra):
        return sh(IP, "netns", "exec", self.a, str(INIT), "net-apply", str(cfg_path), *extra, check=False)

    def addrs(self, dev):
        out = json.loads(sh(IP, "-n", self.a, "-j", "addr", "show", "dev", dev).stdout)
        return sorted(f"{i['local']}/{i['prefixlen']}" for i in out[0]["addr_info"] if i["family"] == "inet")

    def link(self, dev):
        return json.loads(sh(IP, "-n", self.a, "-j", "-d", "link", "show", "dev", dev).stdout)[0]

    def routes(self):
        out = json.loads(sh(IP, "-n", self.a, "-j", "route", "show", "table", "main").stdout)
        return sorted((r["dst"], r.get("gateway"), r.get("dev")) for r in out)

    def snapshot(self):
        return (sh(IP, "-n", self.a, "-j", "addr").stdout, self.routes())

    def close(self):
        for ns in (self.a, self.p):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


@pytest.fixture
def nets():
    made = []

    def make(tag="x"):
        n = Netns(tag)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def kernel_has(kind):
    ns = f"lbi{os.getpid()}probe"
    sh(IP, "netns", "add", ns)
    try:
        args = {"vlan": ["link", "add", "link", "lo", "name", "v", "type", "vlan", "id", "2"],
                "bond": ["link", "add", "b", "type", "bond"]}[kind]
        return sh(IP, "-n", ns, *args, check=False).returncode == 0
    finally:
        sh(IP, "netns", "del", ns, check=False)


STATIC = """
hostname = "lb1"
dns = ["10.199.0.53"]
search = ["example.test"]

[[interface]]
name = "eth0"
mtu = 1400
addresses = ["10.199.0.2/24"]
gateway = "10.199.0.1"

[[route]]
destination = "10.198.0.0/24"
gateway = "10.199.0.254"
"""


def test_static_apply_is_read_back_and_idempotent(nets, tmp_path):
    n = nets("s")
    sh(IP, "-n", n.p, "addr", "add", "10.199.0.1/24", "dev", "peer0")
    cfg = tmp_path / "network.toml"
    cfg.write_text(STATIC)
    resolv = tmp_path / "resolv.conf"
    r = n.apply(cfg, "--resolv", str(resolv))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "eth0: +10.199.0.2/24" in r.stdout
    assert n.addrs("eth0") == ["10.199.0.2/24"]
    link = n.link("eth0")
    assert link["mtu"] == 1400 and "UP" in link["flags"]
    routes = n.routes()
    assert ("default", "10.199.0.1", "eth0") in routes
    assert ("10.198.0.0/24", "10.199.0.254", "eth0") in routes
    assert resolv.read_text().splitlines()[1:] == ["search example.test", "nameserver 10.199.0.53"]
    # The peer reaches the appliance.
    assert sh(IP, "netns", "exec", n.p, program("ping"), "-c1", "-W2", "10.199.0.2", check=False).returncode == 0

    before = n.snapshot()
    mtime = resolv.stat().st_mtime_ns
    r = n.apply(cfg, "--resolv", str(resolv))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no changes"
    assert n.snapshot() == before
    assert resolv.stat().st_mtime_ns == mtime


def test_changes_apply_as_a_diff(nets, tmp_path):
    """New settings at run time: only what differs changes; what the old settings
    had and the new ones do not is removed; others' addresses (lbcore's virtual IPs)
    stay."""
    n = nets("d")
    first = tmp_path / "first.toml"
    first.write_text(STATIC)
    second = tmp_path / "second.toml"
    second.write_text(STATIC.replace("10.199.0.2/24", "10.199.0.3/24").replace("mtu = 1400", "mtu = 1500")
                      .split("[[route]]")[0])
    sh(IP, "-n", n.a, "link", "set", "eth0", "up")
    sh(IP, "-n", n.a, "addr", "add", "10.199.0.70/24", "dev", "eth0")
    r = sh(IP, "netns", "exec", n.a, str(INIT), "net-apply", str(first), "--then", str(second), check=False)
    assert r.returncode == 0, r.stderr
    one, two = r.stdout.strip().splitlines()
    assert "eth0: +10.199.0.2/24" in one and "route 10.198.0.0/24 via 10.199.0.254" in one
    assert set(two.split("; ")) == {"eth0: mtu 1500", "eth0: +10.199.0.3/24", "eth0: -10.199.0.2/24",
                                    "route 10.198.0.0/24 removed"}, two
    assert n.addrs("eth0") == ["10.199.0.3/24", "10.199.0.70/24"]
    routes = n.routes()
    assert ("default", "10.199.0.1", "eth0") in routes
    assert not any(r[0] == "10.198.0.0/24" for r in routes)
    # A fresh process (a reboot) with the same settings changes nothing.
    assert n.apply(second).stdout.strip() == "no changes"


def test_address_changed_within_its_subnet_is_applied(nets, tmp_path):
    n = nets("p")
    sh(IP, "netns", "exec", n.a, program("sysctl"), "-qw", "net.ipv4.conf.eth0.promote_secondaries=0")
    first = tmp_path / "first.toml"
    first.write_text(STATIC.split("[[route]]")[0])
    second = tmp_path / "second.toml"
    second.write_text(STATIC.replace("10.199.0.2/24", "10.199.0.3/24").split("[[route]]")[0])
    r = sh(IP, "netns", "exec", n.a, str(INIT), "net-apply", str(first), "--then", str(second), check=False)
    assert n.addrs("eth0") == ["10.199.0.3/24"], r.stdout + r.stderr
    assert ("default", "10.199.0.1", "eth0") in n.routes()
    assert r.returncode == 0, r.stdout + r.stderr


def test_vlan(nets, tmp_path):
    if not kernel_has("vlan"):
        pytest.skip("this kernel has no 802.1Q VLAN support (8021q)")
    n = nets("v")
    cfg = tmp_path / "network.toml"
    cfg.write_text("""
[[interface]]
name = "eth0"

[[interface]]
name = "eth0.20"
kind = "vlan"
parent = "eth0"
vlan_id = 20
addresses = ["10.196.0.2/24"]
""")
    r = n.apply(cfg)
    assert r.returncode == 0, r.stderr + r.stdout
    link = n.link("eth0.20")
    assert link["linkinfo"]["info_kind"] == "vlan"
    assert link["linkinfo"]["info_data"]["id"] == 20
    assert n.addrs("eth0.20") == ["10.196.0.2/24"]
    assert n.apply(cfg).stdout.strip() == "no changes"


def test_bond(nets, tmp_path):
    if not kernel_has("bond"):
        pytest.skip("this kernel has no bonding driver")
    n = nets("b")
    sh(IP, "-n", n.a, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1", "netns", n.p)
    cfg = tmp_path / "network.toml"
    cfg.write_text("""
[[interface]]
name = "bond0"
kind = "bond"
members = ["eth0", "eth1"]
bond_mode = "active-backup"
addresses = ["10.195.0.2/24"]
""")
    r = n.apply(cfg)
    assert r.returncode == 0, r.stderr + r.stdout
    link = n.link("bond0")
    assert link["linkinfo"]["info_kind"] == "bond"
    assert link["linkinfo"]["info_data"]["mode"] == "active-backup"
    assert n.link("eth0").get("master") == "bond0"
    assert n.link("eth1").get("master") == "bond0"
    assert n.addrs("bond0") == ["10.195.0.2/24"]
    assert n.apply(cfg).stdout.strip() == "no changes"


class Dnsmasq:
    """dnsmasq serving DHCP on peer0 of namespace `ns` from address `server`; every
    line it logs is kept with the monotonic time the test read it."""

    def __init__(self, ns, tmp, server, leases, lease_s, t1, t2, name="dnsmasq"):
        self.lines = []
        self.proc = subprocess.Popen(
            [IP, "netns", "exec", ns, program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--interface=peer0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
             # dnsmasq's own lease is 2 minutes at least; the client is given lease_s.
             "--dhcp-range=10.197.0.50,10.197.0.60,255.255.255.0,2m", f"--dhcp-option=51,{lease_s}",
             f"--dhcp-option=option:router,{server}", "--dhcp-option=option:dns-server,10.197.0.53",
             f"--dhcp-option=option:T1,{t1}", f"--dhcp-option=option:T2,{t2}",
             f"--dhcp-leasefile={leases}", f"--pid-file={tmp / (name + '.pid')}", "--user=root"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def acks(self):
        """(time read, address) of each DHCPACK it sent."""
        out = []
        for t, line in list(self.lines):
            m = re.search(r"DHCPACK\(peer0\) (\S+)", line)
            if m:
                out.append((t, m.group(1)))
        return out

    def text(self):
        return "\n".join(line for _, line in self.lines)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.reader.join(timeout=5)


@pytest.fixture
def dhcp(nets, tmp_path):
    """The appliance's namespace with a DHCP client (`init net-apply --hold`) and the
    peer's, where the test starts DHCP servers."""
    started = []

    class Dhcp:
        n = nets("h")
        leases = tmp_path / "leases"
        resolv = tmp_path / "resolv.conf"
        log = tmp_path / "client.log"
        client = None

        def server(self, address, lease_s, t1, t2):
            sh(IP, "-n", self.n.p, "addr", "add", f"{address}/24", "dev", "peer0")
            d = Dnsmasq(self.n.p, tmp_path, address, self.leases, lease_s, t1, t2, name=f"dnsmasq{len(started)}")
            started.append(d)
            return d

        def start_client(self):
            cfg = tmp_path / "network.toml"
            cfg.write_text('[[interface]]\nname = "eth0"\ndhcp = true\n')
            self.client = subprocess.Popen(
                [IP, "netns", "exec", self.n.a, str(INIT), "net-apply", str(cfg), "--resolv", str(self.resolv),
                 "--hold"], stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

        def text(self):
            return self.log.read_text(errors="replace")

        def wait_address(self, timeout=30):
            """Polls eth0 until it has an address; returns it and when it was seen."""
            addrs = wait_for(lambda: self.n.addrs("eth0"), timeout=timeout, interval=0.05,
                             what=f"an address from DHCP on eth0:\n{self.text()}")
            return addrs, time.monotonic()

    d = Dhcp()
    try:
        yield d
    finally:
        for p in [d.client] + [s.proc for s in started]:
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def test_dhcp_lease_renewed_at_t1_and_released(dhcp):
    t1 = 3
    server = dhcp.server("10.197.0.1", lease_s=120, t1=t1, t2=100)
    dhcp.start_client()
    addrs, bound = dhcp.wait_address()
    assert len(addrs) == 1 and addrs[0].startswith("10.197.0.") and addrs[0].endswith("/24"), addrs
    ip = addrs[0].split("/")[0]
    assert ("default", "10.197.0.1", "eth0") in dhcp.n.routes()
    assert "nameserver 10.197.0.53" in dhcp.resolv.read_text()
    # Two renewals, each T1 after the one before (the server's ACKs, as it sent them).
    wait_for(lambda: len(server.acks()) >= 3, timeout=4 * t1, what=f"two renewals:\n{server.text()}")
    times = [t for t, a in server.acks()]
    assert {a for t, a in server.acks()} == {ip}
    for before, after in zip(times, times[1:]):
        assert t1 * 0.8 <= after - before <= t1 * 1.5, f"renewal {after - before:.1f} s after the last, T1 = {t1} s"
    assert ip in dhcp.leases.read_text()
    os.killpg(dhcp.client.pid, signal.SIGTERM)
    dhcp.client.wait(timeout=10)
    assert dhcp.n.addrs("eth0") == []
    wait_for(lambda: ip not in dhcp.leases.read_text(), timeout=5, what="dnsmasq to drop the released lease")


def test_dhcp_rebinds_with_another_server_at_t2_keeping_the_address(dhcp):
    """The server goes away right after the lease is granted and another one (same
    lease database) answers on another address: renewing (unicast to the first
    server) from T1 gets no answer, rebinding (broadcast) at T2 is answered by the
    second; the address stays on eth0 all along, and the default route follows."""
    lease_s, t1, t2 = 30, 3, 8
    first = dhcp.server("10.197.0.1", lease_s, t1, t2)
    dhcp.start_client()
    addrs, bound = dhcp.wait_address()
    first.stop()
    sh(IP, "-n", dhcp.n.p, "addr", "del", "10.197.0.1/24", "dev", "peer0")
    second = dhcp.server("10.197.0.2", lease_s, t1, t2)
    missing = []
    while not second.acks() and time.monotonic() - bound < lease_s:
        if dhcp.n.addrs("eth0") != addrs:
            missing.append(round(time.monotonic() - bound, 1))
        time.sleep(0.1)
    assert second.acks(), f"the second server was never asked:\n{second.text()}\n{dhcp.text()}"
    acked, address = second.acks()[0]
    assert address == addrs[0].split("/")[0]
    assert missing == [], f"eth0 lost its address at {missing} s"
    after = acked - bound
    # Not before T2 (less the time the test takes to see the lease: an eighth of T2
    # is plenty, and still far above T1), and soon after it.
    assert t2 * 0.875 <= after <= t2 * 1.25, f"rebound {after:.1f} s after the lease, T1 = {t1} s, T2 = {t2} s"
    wait_for(lambda: ("default", "10.197.0.2", "eth0") in dhcp.n.routes(), timeout=5,
             what=f"the default route through the second server's router: {dhcp.n.routes()}")
    assert dhcp.n.addrs("eth0") == addrs


def test_dhcp_expired_lease_removes_the_address_and_a_returning_server_gives_one(dhcp):
    """No server answers after the lease was granted: the address goes when the lease
    ends (not before); once a server is back the client gets a lease again."""
    lease_s, t1, t2 = 20, 3, 8
    first = dhcp.server("10.197.0.1", lease_s, t1, t2)
    dhcp.start_client()
    addrs, bound = dhcp.wait_address()
    first.stop()
    wait_for(lambda: dhcp.n.addrs("eth0") == [], timeout=lease_s * 2, interval=0.05,
             what=f"the address to go at the end of the lease:\n{dhcp.text()}")
    gone = time.monotonic() - bound
    assert lease_s * 0.95 <= gone <= lease_s * 1.25, f"address removed {gone:.1f} s after the lease, lease {lease_s} s"
    sh(IP, "-n", dhcp.n.p, "addr", "del", "10.197.0.1/24", "dev", "peer0")
    back = dhcp.server("10.197.0.1", lease_s, t1, t2)
    again, _ = dhcp.wait_address(timeout=lease_s)
    assert again[0].startswith("10.197.0.") and back.acks(), again
