"""Network apply inside network namespaces made by the test: addresses, MTU,
routes (read back as the kernel has them), idempotence, changes applied as a diff,
VLAN and bond where the kernel supports them, and DHCP against a real dnsmasq in a
peer namespace (lease obtained, renewed, released)."""

import json
import os
import signal
import subprocess

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


def test_dhcp_lease_renewed_and_released(nets, tmp_path):
    n = nets("h")
    sh(IP, "-n", n.p, "addr", "add", "10.197.0.1/24", "dev", "peer0")
    leases = tmp_path / "leases"
    dnsmasq = subprocess.Popen(
        [IP, "netns", "exec", n.p, program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
         "--port=0", "--interface=peer0", "--bind-interfaces", "--log-dhcp",
         "--dhcp-range=10.197.0.50,10.197.0.60,255.255.255.0,2m",
         "--dhcp-option=option:router,10.197.0.1", "--dhcp-option=option:dns-server,10.197.0.53",
         "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6",
         f"--dhcp-leasefile={leases}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "wb"), start_new_session=True)
    client = None
    try:
        cfg = tmp_path / "network.toml"
        cfg.write_text('[[interface]]\nname = "eth0"\ndhcp = true\n')
        resolv = tmp_path / "resolv.conf"
        log = tmp_path / "client.log"
        client = subprocess.Popen(
            [IP, "netns", "exec", n.a, str(INIT), "net-apply", str(cfg), "--resolv", str(resolv), "--hold"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        text = lambda: log.read_text(errors="replace")
        wait_for(lambda: "dhcp eth0: bound 10.197.0." in text(), timeout=30, what=f"a lease:\n{text()}")
        addrs = n.addrs("eth0")
        assert len(addrs) == 1 and addrs[0].startswith("10.197.0.") and addrs[0].endswith("/24"), addrs
        assert ("default", "10.197.0.1", "eth0") in n.routes()
        assert "nameserver 10.197.0.53" in resolv.read_text()
        ip = addrs[0].split("/")[0]
        wait_for(lambda: text().count("dhcp eth0: renewed " + addrs[0]) >= 2, timeout=20,
                 what=f"two renewals:\n{text()}")
        assert ip in leases.read_text()
        os.killpg(client.pid, signal.SIGTERM)
        client.wait(timeout=10)
        assert f"dhcp eth0: released {addrs[0]}" in text()
        assert n.addrs("eth0") == []
        wait_for(lambda: ip not in leases.read_text(), timeout=5, what="dnsmasq to drop the released lease")
    finally:
        for p in (client, dnsmasq):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
