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
"""

import re

from lab.vm import GUEST, disk_copy, ping, preload_data, services_ready
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
    m = con.expect(r"(?s)=== Medical load balancer [^\n]* ===\n(.*?)Choice \(1-5\)", 30)
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
