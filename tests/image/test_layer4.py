"""Layer 4 inside the booted appliance: lbcore programs the VM kernel's IPVS (the host
kernel has none), with dcmtk peers in test namespaces.

One boot serves every check (a TCG boot costs minutes):

    client ns 10.99.8.21 --- (router: the netns fixture, 10.99.8.1 / 10.99.7.1)
                                   |  bridge: the VM's tap + a veth to the lab switch
                 VM 10.99.7.10 ----+---- rs1 10.99.7.31, rs2 10.99.7.32 (storescp on 104)

- DS_DICOM (VIP .70, TCP 104, direct routing, persistence 300 s, C-ECHO check): echoscu
  and storescu through the VIP succeed; the real server sees the client's own address;
  the client stays on one server; stopping that server's storescp moves new
  associations to the other (the time to its removal from IPVS is printed).
- DICOM_SNAT (VIP .72, snat): the real server sees the appliance's address, with no
  route change on the real servers (lbcore's nftables masquerade).
- DICOM_NAT (VIP .71, nat): the real servers' default route is the appliance; they see
  the client's own address.
- A reload through the web API (lbweb on 9443, from the client's network) with DS2's
  weight changed in DS_DICOM: the kernel's table read over netlink before and after
  differs in that weight only (the time to the table matching is printed); a refused
  configuration changes neither the file nor the table.

The configuration is put on the data partition before the first boot (an ext4 file
system "LBDATA" made with mke2fs -d, which init mounts as it is); the IPVS table is read
over netlink by lbctl, shown by the console menu's service status.
"""

import re
import signal
import subprocess
import time

from lab import dicom_files
from lab.netns import Host, Lab
from lab.programs import program
from lab.vm import GUEST, PASSWORD, choose, disk_copy, note, ping, preload_data, run, services_ready, wizard_static
from lab.wait import listening, wait_for
from lab.webapi import ApiClient

IP = program("ip")

CLIENT = "10.99.8.21"
VIP_DR, VIP_NAT, VIP_SNAT = "10.99.7.70", "10.99.7.71", "10.99.7.72"
PORT = 104


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
address = "10.99.7.31"
weight = 100
{limits}
[[service.real_server]]
label = "DS2"
address = "10.99.7.32"
weight = 100
{limits}
'''


CONFIG = (
    service("DS_DICOM", VIP_DR, "direct-routing")
    # a failed server stays with weight 0 here; connection thresholds
    + service("DICOM_NAT", VIP_NAT, "nat", 'on_failure = "weight-zero"',
              "max_connections = 500\nmin_connections = 10\n")
    + service("DICOM_SNAT", VIP_SNAT, "snat")
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
            run(*ns, "route", "add", "default", "via", "10.99.7.1")
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


def ipvs_table(con):
    """The kernel's IPVS table as the console's service status shows it:
    {"TCP VIP:PORT": {"RIP:PORT": {"forward", "weight", "active", "inactive"}}}."""
    choose(con, "1")
    m = con.expect(r"(?s)Services:(.*?)(?=Choice \(1-5\))", 60)
    text = m.group(1)
    assert "IPVS table (kernel):" in text, text
    table, current = {}, None
    for line in text.split("IPVS table (kernel):", 1)[1].splitlines():
        s = re.match(r"\s+(TCP \S+) (\w+)", line)
        d = re.match(r"\s+-> (\S+) (\w+) weight (\d+) upper (\d+) lower (\d+) active (\d+) inactive (\d+)", line)
        if s:
            current = table.setdefault(s.group(1), {})
        elif d and current is not None:
            current[d.group(1)] = {
                "forward": d.group(2), "weight": int(d.group(3)), "upper": int(d.group(4)),
                "lower": int(d.group(5)), "active": int(d.group(6)), "inactive": int(d.group(7)),
            }
    return table, text


def dicom(client, tool, vip, *files):
    args = [program(tool), "-aet", "MODALITY1", "-aec", "LB-SCP", "-to", "10", vip, str(PORT), *map(str, files)]
    r = client.run(args, check=False, timeout=60)
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}"


def new_associations(scps, before):
    return {name: s.associations()[before[name]:] for name, s in scps.items()}


def without_counters(table):
    """The kernel's IPVS table (as lbcore's status gives it) without the traffic
    counters: what a configuration change may alter."""
    return {
        (s["key"]["address"], s["key"]["port"]): {
            "spec": s["spec"],
            "dests": {(d["key"]["address"], d["key"]["port"]): d["spec"] for d in s["dests"]},
        }
        for s in table
    }


def reload_changes_only_the_weight(client):
    """Through the web API, from the client's network: DS_DICOM's DS2 goes from weight
    100 to 50. The kernel's table, read over netlink before and after, differs in that
    one weight and nothing else."""
    api = ApiClient(client, GUEST)
    status, body = api.login(PASSWORD)
    assert status == 200, body
    assert api.call("GET", "/api/config")["text"] == CONFIG
    before = without_counters(api.call("GET", "/api/status")["ipvs"])
    ds2 = 'label = "DS2"\naddress = "10.99.7.32"\nweight = '
    assert CONFIG.count(ds2 + "100") == 3
    changed = CONFIG.replace(ds2 + "100", ds2 + "50", 1)  # the first service: DS_DICOM

    sent = time.monotonic()
    answer = api.call("PUT", "/api/config", {"text": changed})
    applied = time.monotonic() - sent
    dr = (VIP_DR, PORT)
    rs2 = ("10.99.7.32", PORT)
    after = wait_for(lambda: (t := without_counters(api.call("GET", "/api/status")["ipvs"]))
                     [dr]["dests"][rs2]["weight"] == 50 and t, 30, interval=0.2,
                     what="DS2's new weight in the kernel's table")
    matched = time.monotonic() - sent
    note(f"Layer 4: configuration sent through the web API -> applied in {applied:.2f} s, "
         f"kernel table matching {matched:.2f} s after sending ({answer['message']})")
    expected = {k: {"spec": v["spec"], "dests": dict(v["dests"])} for k, v in before.items()}
    expected[dr]["dests"][rs2] = dict(expected[dr]["dests"][rs2], weight=50)
    assert after == expected, f"only DS2's weight in DS_DICOM changes:\nbefore {before}\nafter {after}"

    # a refused change (a misspelt field) leaves the file and the kernel's table alone
    status, _, body = api.request("PUT", "/api/config", {"text": changed.replace("weight = 50", "wieght = 50")})
    assert status == 422 and "wieght" in body["error"], body
    assert api.call("GET", "/api/config")["text"] == changed
    assert without_counters(api.call("GET", "/api/status")["ipvs"]) == after


def test_layer4_dr_nat_snat_in_the_appliance(image, vms, netns, tmp_path):
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/lbcore.toml": CONFIG})
    topo = Topology(netns)
    try:
        scps = {name: Scp(h, tmp_path) for name, h in topo.rs.items()}
        for s in scps.values():
            s.start()
        vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0")
        con = vm.console
        wizard_static(con)
        services_ready(con, "Layer 4 boot")
        ping(netns)

        # every service and server in the kernel's table once the checks are up
        def all_in_table():
            table, text = ipvs_table(con)
            ok = all(len(table.get(f"TCP {v}:{PORT}", {})) == 2 for v in (VIP_DR, VIP_NAT, VIP_SNAT))
            return table if ok else None
        table = wait_for(all_in_table, 90, interval=1, what="the three services with two servers each in IPVS")
        # what the kernel holds, read back over netlink, is what the configuration says
        dr = table[f"TCP {VIP_DR}:{PORT}"]
        nat = table[f"TCP {VIP_NAT}:{PORT}"]
        assert {(d["forward"], d["weight"], d["upper"], d["lower"]) for d in dr.values()} == {("route", 100, 0, 0)}, dr
        assert {(d["forward"], d["weight"], d["upper"], d["lower"]) for d in nat.values()} == {("masq", 100, 500, 10)}, nat
        text = ipvs_table(con)[1]
        for vip in (VIP_DR, VIP_NAT, VIP_SNAT):
            assert f"TCP {vip}:{PORT} wlc persistent 300 mask /32" in text, text

        client = topo.client
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

        # --- failover: the sticky server's storescp stops ---
        other = "ds2" if sticky == "ds1" else "ds1"
        rip = f"{topo.rs[sticky].address}:{PORT}"
        scps[sticky].stop()
        failed = time.monotonic()
        wait_for(lambda: rip not in ipvs_table(con)[0].get(f"TCP {VIP_DR}:{PORT}", {rip: 1}), 60,
                 interval=0.2, what=f"{rip} to leave the IPVS table")
        removal = time.monotonic() - failed
        # the NAT service's own check (on_failure = weight-zero) keeps it, with weight 0
        wait_for(lambda: ipvs_table(con)[0][f"TCP {VIP_NAT}:{PORT}"].get(rip, {}).get("weight") == 0, 30,
                 interval=0.5, what=f"{rip} at weight 0 in the NAT service")
        note(f"Layer 4: real server failed -> removed from IPVS in {removal:.1f} s "
             "(C-ECHO check every 2 s, fall 2; read through the serial console)")
        before = {n: len(s.associations()) for n, s in scps.items()}
        for _ in range(2):
            dicom(client, "echoscu", VIP_DR)
        got = new_associations(scps, before)
        assert len(got[other]) == 2 and got[other][0][0] == CLIENT, got

        # --- NAT: the real servers route through the appliance ---
        scps[sticky].start()
        for h in topo.rs.values():
            ns = [IP, "-n", h.ns]
            run(*ns, "route", "replace", "default", "via", GUEST)
            # replies from the DR VIP still go straight to the router
            run(*ns, "rule", "add", "from", VIP_DR, "lookup", "100")
            run(*ns, "route", "add", "default", "via", "10.99.7.1", "table", "100")
        wait_for(lambda: ipvs_table(con)[0][f"TCP {VIP_DR}:{PORT}"].get(rip, {}).get("weight") == 100
                 and ipvs_table(con)[0][f"TCP {VIP_NAT}:{PORT}"][rip]["weight"] == 100, 60, interval=1,
                 what=f"{rip} back in the DR service and at full weight in the NAT service")
        before = {n: len(s.associations()) for n, s in scps.items()}
        dicom(client, "echoscu", VIP_NAT)
        dicom(client, "storescu", VIP_NAT, files[1])
        got = new_associations(scps, before)
        peers = {peer for a in got.values() for peer, _ in a}
        assert peers == {CLIENT}, f"NAT: the real server sees the client's own address: {got}"
        assert sum(len(a) for a in got.values()) == 2, got
        table, text = ipvs_table(con)
        end = text.split("IPVS table (kernel):", 1)[1].strip("\n").split("\n\n")[0]
        note("Layer 4: IPVS table at the end:\n" + end)

        reload_changes_only_the_weight(client)
    finally:
        topo.close()
