"""VLANs and bonds from /data/config/network.toml, applied by init to a real kernel:
the booted appliance under QEMU (the host kernel has no 8021q/bonding, so the
namespace tests in tests/init/test_network.py skip these cases there).

One boot, with network.toml put on the data partition before it (no wizard):

    test ns 10.99.7.1 (lbtap0) ---- tap ---- VM eth0 -> bond0 (active-backup) 10.99.7.10/24
                                                         +-- bond0.42 (VLAN 42) 10.99.42.10/24

- the appliance comes up (services ready) with these settings;
- the bond's address answers ping from the namespace (untagged, through eth0 as the
  bond's only member; eth0 itself holds no address);
- the console's status screen lists bond0 10.99.7.10/24 and bond0.42 10.99.42.10/24
  (the VLAN interface exists in the VM's kernel with its address).
The host cannot make a VLAN peer (no 8021q), so the VLAN is checked inside the VM only.

DHCP in a real boot: a dnsmasq DHCP server on the tap in the test namespace; the
first-boot wizard answers dhcp; the VM gets a lease (dnsmasq's lease file names the
VM's MAC address and the address), answers ping on it, shows it on the status screen,
and releases it when it shuts down.
"""

import re
import signal
import subprocess

from lab.programs import program
from lab.vm import BOOT_TIMEOUT, GUEST, PASSWORD, choose, disk_copy, ping, preload_data, services_ready
from lab.wait import wait_for

BOND, VLAN, VLAN_ID = "bond0", "bond0.42", 42
VLAN_ADDR = "10.99.42.10/24"

NETWORK = f'''
hostname = "lbnet"

[[interface]]
name = "{BOND}"
kind = "bond"
members = ["eth0"]
bond_mode = "active-backup"
addresses = ["{GUEST}/24"]
gateway = "10.99.7.1"

[[interface]]
name = "{VLAN}"
kind = "vlan"
parent = "{BOND}"
vlan_id = {VLAN_ID}
addresses = ["{VLAN_ADDR}"]
'''


def status_addresses(con):
    """Redraws the status screen; returns its {interface: [addresses]} and its text."""
    con.send("")
    m = con.expect(r"(?s)=== Medical load balancer [^\n]* ===\n(.*?)Choice \(1-6\)", 30)
    text = m.group(1)
    addrs = {}
    for ifc, a in re.findall(r"^\s+address:\s+(\S+) (\S+)$", text, re.M):
        addrs.setdefault(ifc, []).append(a)
    return addrs, text


def test_bond_and_vlan_from_network_toml(image, vms, netns, tmp_path):
    disk = disk_copy(image, tmp_path)
    preload_data(disk, tmp_path, {"config/network.toml": NETWORK})
    vm = vms(disk, firmware="bios", netns=netns, tap="lbtap0")
    con = vm.console
    services_ready(con, "Bond + VLAN boot")
    assert "first-boot setup" not in con.buf, "network.toml on /data: no wizard"

    # the bond carries the management address, untagged, over eth0
    ping(netns)

    # the VLAN interface on the bond, with its address, in the VM's kernel
    want = {BOND: [f"{GUEST}/24"], VLAN: [VLAN_ADDR]}
    last = {}

    def screen_ok():
        addrs, text = status_addresses(con)
        last["text"] = text
        return addrs == want

    try:
        wait_for(screen_ok, 30, interval=1, what="the bond's and the VLAN's addresses on the status screen")
    except AssertionError as e:
        raise AssertionError(f"{e}; status screen:\n{last.get('text')}") from None
    assert re.search(r"hostname:\s+lbnet", last["text"]), last["text"]


MAC = "52:54:00:12:34:56"  # qemu's default for the first NIC
RANGE = ("10.99.7.50", "10.99.7.60")


def leases(path):
    """dnsmasq's lease file: {MAC: address}."""
    text = path.read_text() if path.exists() else ""
    return {f[1]: f[2] for f in (line.split() for line in text.splitlines()) if len(f) >= 3}


def test_dhcp_lease_in_a_real_boot(image, vms, netns, tmp_path):
    lease_file = tmp_path / "leases"
    dnsmasq = subprocess.Popen(
        [program("ip"), "netns", "exec", netns, program("dnsmasq"), "--keep-in-foreground",
         "--conf-file=/dev/null", "--port=0", "--interface=lbtap0", "--bind-interfaces", "--log-dhcp",
         f"--dhcp-range={RANGE[0]},{RANGE[1]},255.255.255.0,10m", "--dhcp-option=option:router,10.99.7.1",
         f"--dhcp-leasefile={lease_file}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "wb"), start_new_session=True)
    try:
        vm = vms(disk_copy(image, tmp_path), firmware="bios", netns=netns, tap="lbtap0")
        con = vm.console
        con.expect(r"=== Medical load balancer: first-boot setup ===", BOOT_TIMEOUT)
        con.answer(r"Network mode \(dhcp/static\)", "dhcp")
        con.answer(r"Hostname", "lbdhcp")
        con.answer(r"Admin password \(at least 8 characters\)", PASSWORD)
        con.answer(r"Repeat admin password", PASSWORD)
        con.expect(r"mode:\s+dhcp", 30)
        con.answer(r"Apply these settings\? \(yes/no\)", "yes")
        services_ready(con, "DHCP first boot")

        got = wait_for(lambda: leases(lease_file).get(MAC), 60, interval=1,
                       what=f"a lease for {MAC} in dnsmasq's lease file")
        assert got in {f"10.99.7.{n}" for n in range(50, 61)}, f"{got} is not from dnsmasq's range {RANGE}"
        ping(netns, address=got)
        con.send("")  # the status screen shows the leased address
        con.expect(rf"address:\s+eth0 {re.escape(got)}/24", 60)

        choose(con, "5")
        con.answer(r"Shut down now\? \(yes/no\)", "yes")
        assert vm.wait_exit(120) == 0
        # the lease was released at shutdown: dnsmasq drops it
        wait_for(lambda: MAC not in leases(lease_file), 10, interval=0.5,
                 what=f"dnsmasq to drop the lease of {MAC} after the shutdown released it")
    finally:
        if dnsmasq.poll() is None:
            dnsmasq.send_signal(signal.SIGTERM)
            dnsmasq.wait(timeout=10)
