"""The appliance's firewall (lbcore --firewall: nftables table `inet medlb` in the load
balancer's namespace) seen from outside, as hosts of a hospital network see it: the
administrator's host (`client`, inside the lockdown network 10.77.0.0/28) and a host
outside it (`outsider`, .30). Scans are TCP connects and UDP datagrams from those
namespaces: a port is open (connected), closed (refused: the firewall let the SYN
through and nothing listens) or filtered (no answer); each scan is first run against a
real server without a firewall, where every port answers closed, so that a scan that
sees nothing cannot pass for a firewall that drops everything.

Also: the ruleset re-applied 200 times under a continuous probe (an allowed port never
refuses, a denied one never answers); a lockdown undone when not confirmed in its
window and kept when confirmed (through lbweb, as the wizard does); lockdown off;
custom rules that open a port, and ones nft refuses (nothing changes)."""

import json
import socket
import threading
import time

import pytest

from lab.lbcore import VIP
from lab.netns import Lab, connect_from
from lab.peers import tcp_peer
from lab.scan import scan, tcp_state, udp_state
from lab.wait import wait_for

L4_VIP = "10.77.0.101"
LOCKDOWN = "10.77.0.0/28"  # the load balancer (.2) and the administrator's host (.10)
SERVICE_PORTS = {(VIP, 7000), (VIP, 7001), (L4_VIP, 7400)}
SCANNED = sorted(set(range(1, 1025)) | {7000, 7001, 7100, 7400, 7777, 9443, 11112})
CONFIG = f'''
[[service]]
label = "PACS"
layer = 7
address = "{VIP}"
ports = [7000, 7001]
check = {{ kind = "tcp", interval = "1s", timeout = "1s", rise = 1, fall = 1 }}
[[service.real_server]]
label = "RS1"
address = "10.77.0.11"
port = 7100

[[service]]
label = "L4"
layer = 4
address = "{L4_VIP}"
port = 7400
forwarding = "nat"
check = {{ kind = "none" }}
[[service.real_server]]
label = "RS1"
address = "10.77.0.11"
'''


@pytest.fixture(scope="module")
def lab():
    lab = Lab("fwt")
    try:
        lab.add_host("lb", 2)
        lab.add_host("client", 10)
        lab.add_host("rs1", 11)
        lab.add_host("outsider", 30)
        yield lab
    finally:
        lab.close()


@pytest.fixture
def appliance(lab, lbcore):
    """lbcore keeping the firewall, with RS1 up."""
    tcp_peer(lab.hosts["rs1"], "rs1", 7100)
    lb = lbcore(CONFIG, firewall=True)
    lb.wait_health("PACS", "RS1", "up")
    return lb


def lockdown(lb, networks):
    out = lb.ctl("firewall", "lockdown", *networks).stdout
    token = out.strip().split()[-1]
    lb.ctl("firewall", "confirm", token)


def firewall(lb):
    return json.loads(lb.ctl("firewall", "--json").stdout)


def counter(lb, name):
    return next(c["packets"] for c in firewall(lb)["counters"] if c["name"] == name)


def served(host, address, port):
    with connect_from(host, address, port, timeout=5) as s:
        s.settimeout(5)
        return s.recv(100)


def test_the_scanner_sees_closed_ports_where_there_is_no_firewall(lab):
    rs1 = lab.hosts["rs1"].address
    found = scan(lab.hosts["outsider"], [rs1], range(1, 1025))
    assert len(found) == 1024 and set(found.values()) == {"closed"}
    assert udp_state(lab.hosts["outsider"], rs1, 161) == "closed"


def test_with_lockdown_outsiders_reach_only_the_virtual_services(lab, appliance, lbweb):
    lb = appliance
    w = lbweb(lb)
    client, outsider = lab.hosts["client"], lab.hosts["outsider"]
    appliance_addresses = [lab.hosts["lb"].address, VIP, L4_VIP]
    # lockdown off: the web UI from anywhere, never on a service address
    assert tcp_state(outsider, w.address, 9443) == "open"
    assert tcp_state(client, VIP, 9443) == "filtered"

    lockdown(lb, [LOCKDOWN])
    assert firewall(lb)["lockdown"] == [LOCKDOWN]
    dropped = counter(lb, "dropped_management")
    found = scan(outsider, appliance_addresses, SCANNED)
    # Layer 7 listeners answer; Layer 4's port is let through (this kernel has no IPVS
    # to take it, so it is refused rather than dropped)
    assert found == {(VIP, 7000): "open", (VIP, 7001): "open", (L4_VIP, 7400): "closed"}, found
    assert counter(lb, "dropped_management") > dropped
    for port in (53, 67, 123, 161, 514, 9443):
        assert udp_state(outsider, lab.hosts["lb"].address, port) == "no answer", port
    assert counter(lb, "dropped_other") > 0

    # the administrator's host: the web UI (and still never on a service address)
    assert tcp_state(client, w.address, 9443) == "open"
    assert w.login()[0] == 200
    assert tcp_state(client, VIP, 9443) == "filtered"
    # the services work from both
    for host in (client, outsider):
        assert served(host, VIP, 7000) == b"rs1\n"
        assert served(host, VIP, 7001) == b"rs1\n"

    lb.ctl("firewall", "off")
    assert tcp_state(outsider, w.address, 9443) == "open"
    assert "lockdown turned off from lbctl" in lb.log()


def test_the_ruleset_is_replaced_atomically(lab, appliance, lbweb):
    lb = appliance
    w = lbweb(lb)
    outsider = lab.hosts["outsider"]
    lockdown(lb, [LOCKDOWN])
    failures, tries, stop, lock = [], [0, 0], threading.Event(), threading.Lock()

    def allowed():
        while not stop.is_set():
            try:
                connect_from(outsider, VIP, 7000, timeout=1).close()
            except OSError as e:
                failures.append(f"{VIP}:7000 {e!r}")
            tries[0] += 1
            time.sleep(0.003)

    def denied():
        while not stop.is_set():
            try:
                connect_from(outsider, w.address, 9443, timeout=0.05).close()
                failures.append(f"{w.address}:9443 answered")
            except (socket.timeout, TimeoutError):
                pass
            except OSError as e:
                failures.append(f"{w.address}:9443 {e!r}")
            with lock:
                tries[1] += 1

    # a dropped SYN costs a probe its whole timeout: four probe the denied port
    threads = [threading.Thread(target=f) for f in (allowed, denied, denied, denied, denied)]
    for t in threads:
        t.start()
    applied_before = lb.log().count("firewall: ruleset applied")
    try:
        for _ in range(200):
            lb.ctl("reload")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert lb.log().count("firewall: ruleset applied") - applied_before == 200
    print(f"\n200 re-applies; probes: {tries[0]} to an allowed port, {tries[1]} to a denied one")
    assert min(tries) > 200
    assert failures == [], failures[:10]


def test_a_lockdown_not_confirmed_is_undone_and_a_confirmed_one_kept(lab, lbcore, lbweb):
    tcp_peer(lab.hosts["rs1"], "rs1", 7100)
    lb = lbcore(CONFIG, ["--lockdown-confirm-seconds", "5"], firewall=True)
    w = lbweb(lb)
    outsider = lab.hosts["outsider"]
    assert w.login()[0] == 200
    assert w.request("GET", "/api/firewall")[2]["proposal"] == "10.77.0.0/24"

    status, _, applied = w.request("PUT", "/api/firewall/lockdown", {"networks": [LOCKDOWN]})
    assert status == 200 and applied["seconds"] == 5, applied
    assert tcp_state(outsider, w.address, 9443) == "filtered"
    state = w.request("GET", "/api/firewall")[2]["firewall"]
    assert state["pending"]["networks"] == [LOCKDOWN] and state["lockdown"] == [], state
    # unconfirmed: the rules before come back by themselves, nothing was saved
    wait_for(lambda: tcp_state(outsider, w.address, 9443) == "open", 10,
             what="the previous rules to come back")
    assert "not confirmed within 5 s" in lb.log()
    assert "lockdown" not in (lb.firewall_file.read_text() if lb.firewall_file.exists() else "")
    status, _, body = w.request("POST", "/api/firewall/lockdown/confirm", {"token": applied["token"]})
    assert status == 404, body

    # confirmed over a new connection: kept past the window, saved, and after a restart
    status, _, applied = w.request("PUT", "/api/firewall/lockdown", {"networks": [LOCKDOWN]})
    assert status == 200
    status, _, body = w.request("POST", "/api/firewall/lockdown/confirm", {"token": applied["token"]})
    assert status == 200 and body["lockdown"] == [LOCKDOWN], body
    time.sleep(6)
    assert tcp_state(outsider, w.address, 9443) == "filtered"
    assert w.request("GET", "/api/firewall")[0] == 200
    assert LOCKDOWN in lb.firewall_file.read_text()
    lb.restart()
    assert tcp_state(outsider, w.address, 9443) == "filtered"
    assert firewall(lb)["lockdown"] == [LOCKDOWN]
    # the recovery path (what the console's "lockdown off" asks lbcore)
    lb.ctl("firewall", "off")
    assert tcp_state(outsider, w.address, 9443) == "open"
    assert "lockdown" not in lb.firewall_file.read_text()


def test_custom_rules_open_a_port_and_refused_ones_change_nothing(lab, appliance, tmp_path):
    lb = appliance
    outsider, lbhost = lab.hosts["outsider"], lab.hosts["lb"]
    tcp_peer(lbhost, "snmp-agent", 7777)
    assert tcp_state(outsider, lbhost.address, 7777) == "filtered"

    rules = tmp_path / "custom.nft"
    rules.write_text(f"ip saddr {outsider.address} tcp dport 7777 accept\n")
    lb.ctl("firewall", "custom", str(rules))
    assert tcp_state(outsider, lbhost.address, 7777) == "open"
    assert tcp_state(lab.hosts["client"], lbhost.address, 7777) == "filtered"
    before = firewall(lb)
    assert "tcp dport 7777 accept" in before["ruleset"]

    for text, words in [
        ("tcp dport 7777 accept\ntcp dport 1x2 accept\n", "custom rules, line 2"),
        ("accept\n}\nchain evil { type filter hook input priority 0; policy accept; }\n{\n",
         "line 2: a `}` here closes"),
        ("jump nowhere\n", "custom rules, line 1"),
    ]:
        rules.write_text(text)
        r = lb.ctl("firewall", "custom", str(rules), check=False)
        assert r.returncode == 1 and words in r.stderr, (text, r.stderr)
        after = firewall(lb)
        assert after["ruleset"] == before["ruleset"] and after["custom"] == before["custom"]
        assert words.split(":")[0] in after["custom_error"]
        assert tcp_state(outsider, lbhost.address, 7777) == "open"
    assert "tcp dport 1x2" not in lb.firewall_file.read_text()
