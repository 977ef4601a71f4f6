"""Layer 4 inside the booted appliance: lbcore programs the VM kernel's IPVS (the host
kernel has none), with dcmtk and TCP peers in test namespaces.

One boot serves every test of this file (a TCG boot costs a minute); each test puts
the configuration it needs through the web API and leaves the servers online:

    client ns 10.99.8.21 --- (router: the netns fixture, 10.99.8.1 / 10.99.7.1)
                                   |  bridge: the VM's tap + a veth to the lab switch
                 VM 10.99.7.10 ----+---- rs1 10.99.7.31, rs2 10.99.7.32
                                         (storescp on 104, an echo server on 7000,
                                          the fallback's echo server on rs2:7001)

The real servers route through the appliance (NAT needs it), except the replies from
the direct-routing VIP, which go straight to the router.

What the kernel holds is read with readers independent of lbcore: the kernel's own
text in /proc/net/ip_vs, /proc/net/ip_vs_conn and /proc/sys/net/ipv4/vs/*, and, for the
connection thresholds that /proc does not show, a generic netlink dump by the test
probe's own decoder (tests/vmprobe, brought in by an initramfs overlay: the image's
kernel and initramfs, booted with qemu/run --kernel/--initrd/--append; the image gets no
test tools). The probe also relays to init's control socket (stop, start, restart
lbcore) and makes an IPVS service that is not lbcore's.

- DS_DICOM (VIP .70, TCP 104, direct routing, persistence 300 s, C-ECHO check): echoscu
  and storescu through the VIP succeed; the real server sees the client's own address;
  the client stays on one server; stopping that server's storescp moves new
  associations to the other (the time to its removal from IPVS is printed).
- DICOM_SNAT (VIP .72, snat): the real server sees the appliance's address.
- DICOM_NAT (VIP .71, nat, on_failure weight-zero, thresholds): they see the client.
- A reload through the web API changes one weight in the kernel and nothing else; a
  refused configuration changes neither the file nor the table.
- ECHO (VIP .73, TCP 7000, nat, fallback rs2:7001): a long-lived connection keeps
  going while lbcore is stopped, started and restarted (the table is kept); Drain,
  Halt and the fallback server in the kernel.
- The appliance's firewall on throughout; at the end a lockdown to the client's network,
  scanned from a real server's namespace: nothing of the appliance's address answers it.
- lbcore's sysctls; a service made by someone else survives lbcore's syncs, stop,
  start and restart; a service removed from the configuration while lbcore was
  stopped is deleted when it starts (lbcore-ipvs.json); the sh and mh schedulers and
  the persistence netmask.
"""

import re
import signal
import subprocess
import time

import pytest

from lab import dicom_files
from lab.netns import Host, Lab, connect_from
from lab.peers import tcp_peer
from lab.programs import program
from lab.scan import scan, tcp_state
from lab.vm import (GUEST, PASSWORD, PROBE_PORT, Probe, disk_copy, kernel_hz, note, ping, preload_data,
                    probe_boot_args, run, services_ready, wizard_static)
from lab.wait import listening, wait_for
from lab.webapi import ApiClient

IP = program("ip")

CLIENT = "10.99.8.21"
VIP_DR, VIP_NAT, VIP_SNAT, VIP_ECHO = "10.99.7.70", "10.99.7.71", "10.99.7.72", "10.99.7.73"
RS1, RS2 = "10.99.7.31", "10.99.7.32"
PORT, ECHO_PORT, FALLBACK_PORT = 104, 7000, 7001
FOREIGN = "10.99.7.90:5000"  # an IPVS service lbcore did not make


def service(label, vip, forwarding, extra="", limits=""):
    return f'''
[[service]]
label = "{label}"
layer = 4
address = "{vip}"
port = {PORT}
forwarding = "{forwarding}"
scheduler = "wlc"
persistence = {{ timeout = "300s" }}
check = {{ kind = "dicom-echo", calling_ae = "LOADBALANCER", called_ae = "LB-SCP" }}
{extra}
[[service.real_server]]
label = "DS1"
address = "{RS1}"
weight = 100
{limits}
[[service.real_server]]
label = "DS2"
address = "{RS2}"
weight = 100
{limits}
'''


ECHO = f'''
[[service]]
label = "ECHO"
layer = 4
address = "{VIP_ECHO}"
port = {ECHO_PORT}
forwarding = "nat"
scheduler = "rr"
check = {{ kind = "tcp", interval = "1s" }}
fallback = {{ address = "{RS2}", port = {FALLBACK_PORT} }}

[[service.real_server]]
label = "DS1"
address = "{RS1}"
weight = 100

[[service.real_server]]
label = "DS2"
address = "{RS2}"
weight = 100
'''

CONFIG = (
    service("DS_DICOM", VIP_DR, "direct-routing")
    # a failed server stays with weight 0 here; connection thresholds
    + service("DICOM_NAT", VIP_NAT, "nat", 'on_failure = "weight-zero"',
              "max_connections = 500\nmin_connections = 10\n")
    + service("DICOM_SNAT", VIP_SNAT, "snat")
    + ECHO
)


class Topology:
    """The router namespace (the netns fixture, holding the VM's tap) bridges the tap
    with the lab switch of the real servers, and routes to the client's subnet."""

    def __init__(self, netns):
        self.router = netns
        self.lab = Lab("l4", subnet="10.99.7")
        r = [IP, "-n", netns]
        run(*r, "link", "add", "lbbr", "type", "bridge")
        run(*r, "addr", "del", "10.99.7.1/24", "dev", "lbtap0")
        run(*r, "link", "set", "lbtap0", "master", "lbbr")
        run(*r, "addr", "add", "10.99.7.1/24", "dev", "lbbr")
        run(*r, "link", "set", "lbbr", "up")
        # uplink to the lab switch
        run(IP, "link", "add", "up0", "netns", netns, "type", "veth", "peer", "name",
            f"u{self.lab.tag[-8:]}", "netns", self.lab.switch)
        run(IP, "-n", self.lab.switch, "link", "set", f"u{self.lab.tag[-8:]}", "master", "br0", "up")
        run(*r, "link", "set", "up0", "master", "lbbr", "up")
        # the client's subnet
        client_ns = f"{self.lab.tag}-client"
        self.lab._add_ns(client_ns)
        run(IP, "link", "add", "cl0", "netns", netns, "type", "veth", "peer", "name", "eth0",
            "netns", client_ns)
        run(*r, "addr", "add", "10.99.8.1/24", "dev", "cl0")
        run(*r, "link", "set", "cl0", "up")
        run(IP, "-n", client_ns, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        run(IP, "-n", client_ns, "link", "set", "eth0", "up")
        run(IP, "-n", client_ns, "route", "add", "default", "via", "10.99.8.1")
        self.client = Host(self.lab, "client", client_ns, CLIENT)
        self.lab.hosts["client"] = self.client
        self.sysctl(netns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0")
        self.rs = {}
        for name, last in (("ds1", 31), ("ds2", 32)):
            h = self.lab.add_host(name, last)
            ns = [IP, "-n", h.ns]
            # NAT: replies go back through the appliance ...
            run(*ns, "route", "add", "default", "via", GUEST)
            # ... except those from the direct-routing VIP, which go straight to the router
            run(*ns, "rule", "add", "from", VIP_DR, "lookup", "100")
            run(*ns, "route", "add", "default", "via", "10.99.7.1", "table", "100")
            # Direct routing: the VIP on lo, never answered for in ARP
            self.sysctl(h.ns, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                        "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2",
                        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0")
            run(*ns, "addr", "add", f"{VIP_DR}/32", "dev", "lo")
            self.rs[name] = h

    @staticmethod
    def sysctl(ns, *settings):
        run(IP, "netns", "exec", ns, program("sysctl"), "-q", "-w", *settings)

    def close(self):
        self.lab.close()


class Scp:
    """storescp in a real-server namespace, logging each association's peer."""

    def __init__(self, host, tmp_path):
        self.host = host
        self.out = tmp_path / f"{host.name}-in"
        self.out.mkdir(exist_ok=True)
        self.log_path = tmp_path / f"{host.name}-storescp.log"
        self.proc = None

    def start(self):
        log = open(self.log_path, "a")
        self.proc = self.host.spawn(
            [program("storescp"), "-d", "-dhl", "--aetitle", "LB-SCP", "-od", str(self.out), str(PORT)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: listening(self.host, PORT), 10, what=f"storescp on {self.host.name}")

    def stop(self):
        self.host.lab.stop(self.proc, signal.SIGKILL)

    def associations(self):
        """(peer address, calling AE title) of every association so far, health
        checks (calling AE LOADBALANCER) left out."""
        text = self.log_path.read_text(errors="replace")
        out = []
        for block in text.split("D: Association Received: ")[1:]:
            peer = block.split()[0]
            m = re.search(r"Calling Application Name:\s+(\S+)", block)
            if m and m.group(1) != "LOADBALANCER":
                out.append((peer, m.group(1)))
        return out


class Appliance:
    """The booted appliance of this file and what the tests reach it with."""

    def __init__(self, topo, scps, con, probe, api, hz):
        self.topo, self.scps, self.con, self.probe, self.api, self.hz = topo, scps, con, probe, api, hz

    def table(self):
        """The kernel's IPVS table without its counters: /proc/net/ip_vs, with each real
        server's thresholds from the probe's netlink dump (None if it has none)."""
        proc = self.probe.ip_vs()
        dump = self.probe.ipvs_dump()
        out = {}
        for key, s in proc.items():
            dests = {}
            for d, v in s["dests"].items():
                nl = dump.get(key, {}).get("dests", {}).get(d, {})
                dests[d] = {"forward": v["forward"], "weight": v["weight"],
                            "upper": nl.get("upper"), "lower": nl.get("lower")}
            out[key] = {"scheduler": s["scheduler"], "persistent": s["persistent"], "netmask": s["netmask"],
                        "dests": dests}
        return out

    def put_config(self, text):
        """Submits a configuration through the web API (lbcore applies it) unless it is
        the one in force."""
        if self.api.call("GET", "/api/config")["text"] != text:
            self.api.call("PUT", "/api/config", {"text": text})

    def set_state(self, svc, server, state):
        self.api.call("POST", f"/api/services/{svc}/servers/{server}/state", {"state": state})

    def lbcore(self):
        return self.probe.service("lbcore")

    def init(self, line):
        answer = self.probe.init(line)
        assert answer == {"ok": True}, f"init {line}: {answer}"

    def stop_lbcore(self):
        self.init("stop lbcore")
        wait_for(lambda: self.lbcore()["state"] == "stopped" and self.lbcore()["pid"] is None, 30,
                 interval=0.5, what="init to report lbcore stopped")

    def start_lbcore(self):
        self.init("start lbcore")
        wait_for(lambda: self.lbcore()["state"] == "ready", 60, interval=0.5, what="lbcore ready again")


@pytest.fixture(scope="module")
def appliance(image, module_vms, module_netns, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layer4")
    disk = disk_copy(image, tmp)
    preload_data(disk, tmp, {"config/lbcore.toml": CONFIG})
    topo = Topology(module_netns)
    try:
        scps = {name: Scp(h, tmp) for name, h in topo.rs.items()}
        for s in scps.values():
            s.start()
        tcp_peer(topo.rs["ds1"], "DS1", ECHO_PORT)
        tcp_peer(topo.rs["ds2"], "DS2", ECHO_PORT)
        tcp_peer(topo.rs["ds2"], "FALLBACK", FALLBACK_PORT)
        vm = module_vms(disk, firmware="bios", netns=module_netns, tap="lbtap0",
                        extra=probe_boot_args(image, tmp))
        con = vm.console
        wizard_static(con)
        services_ready(con, "Layer 4 boot")
        ping(module_netns)
        probe = Probe(module_netns)
        probe.wait()
        api = ApiClient(topo.client, GUEST)
        status, body = api.login(PASSWORD)
        assert status == 200, body
        yield Appliance(topo, scps, con, probe, api, kernel_hz(image))
    finally:
        topo.close()


@pytest.fixture(autouse=True)
def lbcore_running_after(appliance):
    """A test that failed with lbcore stopped leaves it running for the next one."""
    yield
    if appliance.lbcore()["state"] in ("stopped", "stopping"):
        appliance.start_lbcore()


def dicom(client, tool, vip, *files):
    args = [program(tool), "-aet", "MODALITY1", "-aec", "LB-SCP", "-to", "10", vip, str(PORT), *map(str, files)]
    r = client.run(args, check=False, timeout=60)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}"


def new_associations(scps, before):
    return {name: s.associations()[before[name]:] for name, s in scps.items()}


def svc(vip, port=PORT):
    return f"TCP {vip}:{port}"


def all_up(app):
    """The kernel's table once every service of CONFIG has its two servers."""
    keys = (svc(VIP_DR), svc(VIP_NAT), svc(VIP_SNAT), svc(VIP_ECHO, ECHO_PORT))

    def ok():
        t = app.table()
        return t if all(len(t.get(k, {}).get("dests", {})) == 2 for k in keys) else None
    return wait_for(ok, 90, interval=1, what="every service with its two servers in /proc/net/ip_vs")


def test_layer4_dr_nat_snat_in_the_appliance(appliance, tmp_path):
    app = appliance
    app.put_config(CONFIG)
    table = all_up(app)
    # what the kernel holds is what the configuration says
    dr, nat = table[svc(VIP_DR)]["dests"], table[svc(VIP_NAT)]["dests"]
    assert {(d["forward"], d["weight"], d["upper"], d["lower"]) for d in dr.values()} == {("Route", 100, 0, 0)}, dr
    assert {(d["forward"], d["weight"], d["upper"], d["lower"]) for d in nat.values()} == {("Masq", 100, 500, 10)}, nat
    for vip in (VIP_DR, VIP_NAT, VIP_SNAT):
        s = table[svc(vip)]
        # /proc/net/ip_vs gives the timeout in jiffies and the mask in hex
        assert (s["scheduler"], s["persistent"], s["netmask"]) == ("wlc", 300 * app.hz, "255.255.255.255"), s

    client, scps = app.topo.client, app.scps
    # --- direct routing ---
    before = {n: len(s.associations()) for n, s in scps.items()}
    for _ in range(3):
        dicom(client, "echoscu", VIP_DR)
    study = tmp_path / "study"
    study.mkdir()
    files = [study / f"img{i}.dcm" for i in range(3)]
    for i, f in enumerate(files):
        dicom_files.make(f, i, study="7", rows=64, cols=64)
    dicom(client, "storescu", VIP_DR, *files)
    got = new_associations(scps, before)
    used = [n for n, a in got.items() if a]
    assert len(used) == 1, f"persistence keeps the client on one server: {got}"
    sticky = used[0]
    assert len(got[sticky]) == 4 and all(peer == CLIENT for peer, _ in got[sticky]), (
        f"direct routing: the real server sees the client's own address: {got}")
    assert len(list(scps[sticky].out.iterdir())) == 3, "the three images arrived"

    # --- SNAT: the real server sees the appliance; no route change ---
    before = {n: len(s.associations()) for n, s in scps.items()}
    dicom(client, "echoscu", VIP_SNAT)
    dicom(client, "storescu", VIP_SNAT, files[0])
    got = new_associations(scps, before)
    peers = {peer for a in got.values() for peer, _ in a}
    assert peers == {GUEST}, f"SNAT: the real server sees the appliance's address: {got}"
    assert sum(len(a) for a in got.values()) == 2, got

    # --- NAT: the real servers route through the appliance; they see the client ---
    before = {n: len(s.associations()) for n, s in scps.items()}
    dicom(client, "echoscu", VIP_NAT)
    dicom(client, "storescu", VIP_NAT, files[1])
    got = new_associations(scps, before)
    peers = {peer for a in got.values() for peer, _ in a}
    assert peers == {CLIENT}, f"NAT: the real server sees the client's own address: {got}"
    assert sum(len(a) for a in got.values()) == 2, got

    # --- failover: the sticky server's storescp stops ---
    other = "ds2" if sticky == "ds1" else "ds1"
    rip = f"{app.topo.rs[sticky].address}:{PORT}"
    scps[sticky].stop()
    try:
        failed = time.monotonic()
        wait_for(lambda: rip not in app.probe.ip_vs()[svc(VIP_DR)]["dests"], 60, interval=0.2,
                 what=f"{rip} to leave the DR service in /proc/net/ip_vs")
        removal = time.monotonic() - failed
        # the NAT service's own check (on_failure = weight-zero) keeps it, with weight 0
        wait_for(lambda: app.probe.ip_vs()[svc(VIP_NAT)]["dests"].get(rip, {}).get("weight") == 0, 30,
                 interval=0.5, what=f"{rip} at weight 0 in the NAT service")
        note(f"benchmark: Layer 4: real server failed -> removed from IPVS in {removal:.1f} s "
             "(C-ECHO check every 2 s, fall 2; read in /proc/net/ip_vs through the probe)")
        before = {n: len(s.associations()) for n, s in scps.items()}
        for _ in range(2):
            dicom(client, "echoscu", VIP_DR)
        got = new_associations(scps, before)
        assert len(got[other]) == 2 and got[other][0][0] == CLIENT, got
    finally:
        scps[sticky].start()
    wait_for(lambda: (t := app.probe.ip_vs())[svc(VIP_DR)]["dests"].get(rip, {}).get("weight") == 100
             and t[svc(VIP_NAT)]["dests"][rip]["weight"] == 100, 60, interval=1,
             what=f"{rip} back in the DR service and at full weight in the NAT service")
    note("Layer 4: /proc/net/ip_vs at the end:\n" + app.probe.read("/proc/net/ip_vs").rstrip())


def test_reload_through_the_web_api_changes_only_that_weight(appliance):
    """Through the web API, from the client's network: DS_DICOM's DS2 goes from weight
    100 to 50. The kernel's table before and after differs in that one weight and
    nothing else; a refused configuration changes neither the file nor the table."""
    app = appliance
    app.put_config(CONFIG)
    before = all_up(app)
    ds2 = f'label = "DS2"\naddress = "{RS2}"\nweight = '
    assert CONFIG.count(ds2 + "100") == 4
    changed = CONFIG.replace(ds2 + "100", ds2 + "50", 1)  # the first service: DS_DICOM

    sent = time.monotonic()
    answer = app.api.call("PUT", "/api/config", {"text": changed})
    applied = time.monotonic() - sent
    rs2 = f"{RS2}:{PORT}"
    after = wait_for(lambda: (t := app.table())[svc(VIP_DR)]["dests"][rs2]["weight"] == 50 and t, 30,
                     interval=0.2, what="DS2's new weight in /proc/net/ip_vs")
    matched = time.monotonic() - sent
    note(f"benchmark: Layer 4: configuration sent through the web API -> applied in {applied:.2f} s, "
         f"kernel table matching {matched:.2f} s after sending ({answer['message']})")
    expected = {k: dict(v, dests={d: dict(s) for d, s in v["dests"].items()}) for k, v in before.items()}
    expected[svc(VIP_DR)]["dests"][rs2]["weight"] = 50
    assert after == expected, f"only DS2's weight in DS_DICOM changes:\nbefore {before}\nafter {after}"

    # a refused change (a misspelt field) leaves the file and the kernel's table alone
    status, _, body = app.api.request("PUT", "/api/config", {"text": changed.replace("weight = 50", "wieght = 50")})
    assert status == 422 and "wieght" in body["error"], body
    assert app.api.call("GET", "/api/config")["text"] == changed
    assert app.probe.read("/data/config/lbcore.toml") == changed
    assert app.table() == after


def test_lbcore_sets_the_ipvs_and_nat_sysctls(appliance):
    """README: lbcore sets net.ipv4.vs.expire_nodest_conn and expire_quiescent_template
    to 1 (the kernel's defaults are 0) and, with a NAT service, ip_forward and
    vs.conntrack to 1 and ICMP redirects off, read back in /proc/sys."""
    app = appliance
    app.put_config(CONFIG)
    all_up(app)
    sysctl = lambda name: app.probe.read(f"/proc/sys/net/ipv4/{name}").strip()  # noqa: E731
    assert sysctl("vs/expire_nodest_conn") == "1"
    assert sysctl("vs/expire_quiescent_template") == "1"
    assert sysctl("ip_forward") == "1"
    assert sysctl("vs/conntrack") == "1"
    for dev in ("all", "default", "eth0"):
        assert sysctl(f"conf/{dev}/send_redirects") == "0", dev


class EchoClient:
    """A long-lived connection from the client through ECHO's VIP to a real server's
    echo server (which first sends its name)."""

    def __init__(self, client):
        self.sock = connect_from(client, VIP_ECHO, ECHO_PORT, timeout=10)
        self.file = self.sock.makefile("rb")
        self.server = self.file.readline().decode().strip()
        self.port = self.sock.getsockname()[1]

    def echo(self, text):
        self.sock.sendall(text.encode() + b"\n")
        got = self.file.readline().decode().strip()
        assert got == text, f"the connection to {self.server} no longer echoes: sent {text!r}, got {got!r}"

    def close(self):
        self.file.close()
        self.sock.close()


def test_flow_survives_lbcore_stop_start_and_restart(appliance):
    """README: stopping lbcore leaves the IPVS table (and the Layer 4 addresses) in
    place, so a restart does not interrupt established flows: a connection through
    the NAT service ECHO keeps echoing while lbcore is stopped (the table unchanged in
    /proc/net/ip_vs), after it starts, and across `restart lbcore` on init's control
    socket; /proc/net/ip_vs_conn holds its one IPVS connection throughout."""
    app = appliance
    app.put_config(CONFIG)
    table = all_up(app)
    conn = EchoClient(app.topo.client)
    try:
        assert conn.server in ("DS1", "DS2"), conn.server
        rip = f"{RS1 if conn.server == 'DS1' else RS2}:{ECHO_PORT}"
        conn.echo("before")
        me = f"{CLIENT}:{conn.port}"

        def entry():
            found = [c for c in app.probe.ip_vs_conn() if c["client"] == me]
            assert len(found) == 1, f"one IPVS connection of {me} in /proc/net/ip_vs_conn: {found}"
            c = found[0]
            assert (c["vip"], c["dest"], c["state"]) == (f"{VIP_ECHO}:{ECHO_PORT}", rip, "ESTABLISHED"), c
            return c
        entry()

        app.stop_lbcore()
        assert app.table() == table, "the table is kept while lbcore is stopped"
        conn.echo("while lbcore is stopped")
        entry()
        app.start_lbcore()
        conn.echo("after lbcore started")

        pid = app.lbcore()["pid"]
        app.init("restart lbcore")
        wait_for(lambda: (s := app.lbcore())["pid"] not in (None, pid) and s["state"] == "ready", 60,
                 interval=0.5, what="lbcore restarted by init and ready")
        conn.echo("after restart lbcore")
        entry()
        assert app.table() == table
    finally:
        conn.close()


def foreign_intact(app, want):
    t = app.probe.ip_vs().get(f"TCP {FOREIGN}")
    assert t == want, f"the service lbcore did not make is untouched: {t} (was {want})"


def test_service_made_by_someone_else_survives_syncs_stop_start_and_restart(appliance):
    """README: lbcore deletes only services it made itself and never touches others. A
    service made over netlink by the probe (as ipvsadm would) stays, with its real
    server, across a configuration change, a stop and a start (whose first sync
    repairs lbcore's own service, changed behind its back meanwhile) and a restart."""
    app = appliance
    app.put_config(CONFIG)
    all_up(app)
    p = app.probe
    p.ipvs("add-service", "TCP", FOREIGN, "rr")
    try:
        p.ipvs("add-dest", "TCP", FOREIGN, f"{RS1}:5000", "masq", 7)
        want = {"scheduler": "rr", "persistent": None, "netmask": None,
                "dests": {f"{RS1}:5000": {"forward": "Masq", "weight": 7, "active": 0, "inactive": 0}}}
        foreign_intact(app, want)

        # a sync: a configuration change (ECHO's DS2 weight 100 -> 60)
        echo_ds2 = f'label = "DS2"\naddress = "{RS2}"\nweight = 100\n'
        assert CONFIG.endswith(echo_ds2)
        app.put_config(CONFIG[: -len(echo_ds2)] + echo_ds2.replace("100", "60"))
        rs2 = f"{RS2}:{ECHO_PORT}"
        wait_for(lambda: p.ip_vs()[svc(VIP_ECHO, ECHO_PORT)]["dests"][rs2]["weight"] == 60, 30, interval=0.5,
                 what="ECHO's DS2 at weight 60")
        foreign_intact(app, want)

        # stopped: lbcore's own DS1 in ECHO is changed behind its back; its start repairs it
        rs1 = f"{RS1}:{ECHO_PORT}"
        app.stop_lbcore()
        p.ipvs("set-dest", "TCP", f"{VIP_ECHO}:{ECHO_PORT}", rs1, "masq", 3)
        assert p.ip_vs()[svc(VIP_ECHO, ECHO_PORT)]["dests"][rs1]["weight"] == 3
        app.start_lbcore()
        wait_for(lambda: p.ip_vs()[svc(VIP_ECHO, ECHO_PORT)]["dests"][rs1]["weight"] == 100, 30, interval=0.5,
                 what="lbcore's first sync after its start to repair ECHO's DS1")
        foreign_intact(app, want)

        # restart (init's control socket), with lbcore's table changed again just before
        p.ipvs("set-dest", "TCP", f"{VIP_ECHO}:{ECHO_PORT}", rs1, "masq", 4)
        pid = app.lbcore()["pid"]
        app.init("restart lbcore")
        wait_for(lambda: (s := app.lbcore())["pid"] not in (None, pid) and s["state"] == "ready", 60,
                 interval=0.5, what="lbcore restarted and ready")
        wait_for(lambda: p.ip_vs()[svc(VIP_ECHO, ECHO_PORT)]["dests"][rs1]["weight"] == 100, 30, interval=0.5,
                 what="ECHO's DS1 repaired after the restart")
        foreign_intact(app, want)
    finally:
        if f"TCP {FOREIGN}" in p.ip_vs():
            p.ipvs("del-service", "TCP", FOREIGN)
        app.put_config(CONFIG)


def test_service_removed_while_lbcore_was_stopped_is_deleted_at_start(appliance):
    """README: the services lbcore made are listed in lbcore-ipvs.json beside the
    configuration, so a service removed from the configuration while lbcore was
    stopped still goes: with DICOM_SNAT taken out of lbcore.toml while it is stopped,
    its IPVS service stays until lbcore starts, then leaves the kernel; the others
    stay."""
    app = appliance
    p = app.probe
    app.put_config(CONFIG)
    before = all_up(app)
    owned = p.read("/data/config/lbcore-ipvs.json")
    assert VIP_SNAT in owned, owned
    without = CONFIG.replace(service("DICOM_SNAT", VIP_SNAT, "snat"), "")
    assert VIP_SNAT not in without
    app.stop_lbcore()
    try:
        p.write("/data/config/lbcore.toml", without)
        assert svc(VIP_SNAT) in p.ip_vs(), "lbcore stopped: its table is kept"
    finally:
        app.start_lbcore()
    wait_for(lambda: svc(VIP_SNAT) not in p.ip_vs(), 30, interval=0.5,
             what=f"{svc(VIP_SNAT)} to leave /proc/net/ip_vs once lbcore started")
    after = app.table()
    expected = {k: v for k, v in before.items() if k != svc(VIP_SNAT)}
    assert after == expected, f"only DICOM_SNAT's service goes:\nbefore {before}\nafter {after}"
    assert VIP_SNAT not in p.read("/data/config/lbcore-ipvs.json")
    app.put_config(CONFIG)


def test_drain_halt_and_fallback_in_the_kernel(appliance):
    """README: Drain sets weight 0; Halt removes the server; the fallback server is in
    the table only while no real server takes new clients (operator states through the
    web API, the table in /proc/net/ip_vs, a new connection reaching the fallback)."""
    app = appliance
    p = app.probe
    app.put_config(CONFIG)
    all_up(app)
    key = svc(VIP_ECHO, ECHO_PORT)
    rs1, rs2, fb = f"{RS1}:{ECHO_PORT}", f"{RS2}:{ECHO_PORT}", f"{RS2}:{FALLBACK_PORT}"

    def weights():
        return {d: v["weight"] for d, v in p.ip_vs()[key]["dests"].items()}

    def expect(want, what):
        last = {}

        def ok():
            last["w"] = weights()
            return last["w"] == want
        try:
            wait_for(ok, 30, interval=0.5, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}: /proc/net/ip_vs has {last['w']}, want {want}") from None

    def new_client_reaches():
        c = EchoClient(app.topo.client)
        c.close()
        return c.server

    try:
        assert weights() == {rs1: 100, rs2: 100}
        app.set_state("ECHO", "DS1", "drain")
        expect({rs1: 0, rs2: 100}, "Drain: DS1 at weight 0")
        app.set_state("ECHO", "DS1", "halt")
        expect({rs2: 100}, "Halt: DS1 out of the table")
        app.set_state("ECHO", "DS2", "drain")
        expect({rs2: 0, fb: 1}, "no real server takes clients: the fallback in the table")
        assert new_client_reaches() == "FALLBACK"
        app.set_state("ECHO", "DS2", "online")
        expect({rs2: 100}, "DS2 online: the fallback out of the table")
        assert new_client_reaches() == "DS2"
    finally:
        for server in ("DS1", "DS2"):
            app.set_state("ECHO", server, "online")
    expect({rs1: 100, rs2: 100}, "both servers online")


def test_sh_and_mh_schedulers_and_the_persistence_netmask(appliance):
    """README: Layer 4 schedulers include sh and mh, and persistence takes a netmask
    prefix: two services added through the web API are in the kernel with those
    schedulers, one with `persistence = { timeout = "300s", netmask = 24 }` (the kernel
    shows 300 s in jiffies and mask FFFFFF00), and leave it when the configuration
    drops them."""
    app = appliance
    p = app.probe
    app.put_config(CONFIG)
    all_up(app)
    extra = ""
    netmask_24 = 'persistence = { timeout = "300s", netmask = 24 }'
    for label, vip, sched, persistence in (("SH", "10.99.7.74", "sh", netmask_24), ("MH", "10.99.7.75", "mh", "")):
        extra += f'''
[[service]]
label = "{label}"
layer = 4
address = "{vip}"
port = {ECHO_PORT}
forwarding = "nat"
scheduler = "{sched}"
{persistence}
[[service.real_server]]
label = "DS1"
address = "{RS1}"
'''
    app.put_config(CONFIG + extra)
    sh, mh = svc("10.99.7.74", ECHO_PORT), svc("10.99.7.75", ECHO_PORT)

    def both():
        t = p.ip_vs()
        return t if sh in t and mh in t else None
    t = wait_for(both, 30, interval=0.5, what="the SH and MH services in /proc/net/ip_vs")
    assert (t[sh]["scheduler"], t[sh]["persistent"], t[sh]["netmask"]) == ("sh", 300 * app.hz, "255.255.255.0"), t[sh]
    assert (t[mh]["scheduler"], t[mh]["persistent"]) == ("mh", None), t[mh]
    assert set(t[sh]["dests"]) == set(t[mh]["dests"]) == {f"{RS1}:{ECHO_PORT}"}
    text = p.read("/proc/net/ip_vs")
    assert re.search(rf"^TCP\s+0A63074A:1B58 sh\s+persistent {300 * app.hz} FFFFFF00$", text, re.M), text
    # the probe's own netlink decoder sees the same in seconds and as a dotted mask
    d = p.ipvs_dump()[sh]
    assert (d["persistent"], d["netmask"]) == (300, "255.255.255.0"), d

    app.put_config(CONFIG)
    wait_for(lambda: sh not in (t := p.ip_vs()) and mh not in t, 30, interval=0.5,
             what="the SH and MH services to leave the kernel once the configuration drops them")


def test_lockdown_in_the_appliance_scanned_from_a_real_server(appliance):
    """The appliance's own firewall (every test above ran with it): a lockdown to the
    client's network (and the router, whence the probe comes) made and confirmed through
    the web API as the wizard does; a real server's namespace, outside it, then finds no
    port of the appliance's address answering, the web UI included, while the client
    still reaches it and the DR service; lockdown off opens the web UI to it again."""
    app = appliance
    outsider = app.topo.rs["ds1"]
    assert tcp_state(outsider, GUEST, 9443, timeout=5) == "open"
    state = app.api.call("GET", "/api/firewall")
    assert state["firewall"]["enabled"] and state["your_address"] == CLIENT, state
    assert state["proposal"] == "10.99.8.0/24"
    networks = ["10.99.8.0/24", "10.99.7.1/32"]
    applied = app.api.call("PUT", "/api/firewall/lockdown", {"networks": networks})
    confirmed = app.api.call("POST", "/api/firewall/lockdown/confirm", {"token": applied["token"]})
    assert confirmed["lockdown"] == networks, confirmed
    try:
        found = scan(outsider, [GUEST], sorted(set(range(1, 1025)) | {PROBE_PORT, 9443}), timeout=1)
        assert found == {}, found
        dropped = {c["name"]: c["packets"] for c in app.api.call("GET", "/api/firewall")["firewall"]["counters"]}
        assert dropped["dropped_management"] > 0 and dropped["dropped_other"] > 1000, dropped
        assert tcp_state(app.topo.client, GUEST, 9443, timeout=5) == "open"
        dicom(app.topo.client, "echoscu", VIP_DR)
    finally:
        app.api.call("DELETE", "/api/firewall/lockdown")
    assert tcp_state(outsider, GUEST, 9443, timeout=5) == "open"
