"""Layer 4 services on a host: lbcore's part that does not need IPVS to forward.

IPVS itself is exercised inside the booted appliance (tests/image/test_layer4.py): the
kernel here may have no ip_vs module (the CI host's has none). Whether it has is read
from the kernel (/proc/net/ip_vs in the load balancer's namespace), not from lbcore.
What needs IPVS is skipped, with the reason, when the kernel lacks it; what does not is
asserted either way: a Layer 4 service's checks run, without IPVS its status and log say
that it is not forwarded while a Layer 7 service beside it keeps serving, and stopping
lbcore leaves the Layer 4 service address in place (its flows run in the kernel) while
the Layer 7 one goes with the proxy.
"""

import pytest

from lab.lbcore import VIP
from lab.netns import connect_from
from lab.peers import tcp_peer
from lab.programs import program
from lab.wait import wait_for

L4_VIP = "10.77.0.101"
PORT = 7400
NO_IPVS = ("this kernel has no IPVS (no /proc/net/ip_vs: the ip_vs module is absent): Layer 4 "
           "forwarding is tested in the booted appliance, tests/image/test_layer4.py")


def config(lab, l4=True):
    text = f'''
[[service]]
label = "L7"
layer = 7
address = "{VIP}"
port = {PORT}
check = {{ kind = "none" }}
[[service.real_server]]
label = "RS1"
address = "{lab.hosts["rs1"].address}"
'''
    if l4:
        text += f'''
[[service]]
label = "L4"
layer = 4
address = "{L4_VIP}"
port = {PORT}
forwarding = "nat"
check = {{ kind = "tcp", interval = "500ms", timeout = "500ms", rise = 1, fall = 1 }}
[[service.real_server]]
label = "RS1"
address = "{lab.hosts["rs1"].address}"
[[service.real_server]]
label = "RS2"
address = "{lab.hosts["rs2"].address}"
'''
    return text


def addresses(lab):
    return lab.hosts["lb"].run([program("ip"), "-o", "addr", "show", "dev", "eth0"]).stdout


def kernel_has_ipvs(lab):
    """IPVS as the kernel has it, in the load balancer's namespace."""
    return lab.hosts["lb"].run([program("cat"), "/proc/net/ip_vs"], check=False).returncode == 0


@pytest.fixture
def started(lab, lbcore):
    """lbcore with a Layer 7 and a Layer 4 service; RS1 serves, nothing listens on RS2."""
    tcp_peer(lab.hosts["rs1"], "RS1", PORT)
    lb = lbcore(config(lab))
    lb.wait_health("L4", "RS1", "up")
    wait_for(lambda: "refused" in (lb.server("L4", "RS2").get("last_failure") or "").lower(), 10,
             what="RS2's check to be refused")
    return lb


def l4_status(lb):
    status = lb.status()
    return status, next(s for s in status["services"] if s["label"] == "L4")


def test_layer4_checks_run_and_status_names_the_service(lab, started):
    status, l4 = l4_status(started)
    assert l4["layer"] == 4 and l4["forwarding"] == "nat"
    # checks run without IPVS too: RS1 (listening) came up, RS2 (nothing listens) is down
    health = {r["label"]: r["health"] for r in l4["real_servers"]}
    assert health == {"RS1": "up", "RS2": "down"}, l4
    text = started.ctl("status").stdout
    assert "L4 (L4 nat)" in text, text


def test_without_ipvs_layer4_is_reported_not_forwarded_and_layer7_keeps_serving(lab, started):
    if kernel_has_ipvs(lab):
        pytest.skip("this kernel has IPVS: the case without it cannot happen here")
    status, l4 = l4_status(started)
    assert status.get("ipvs") is None, status.get("ipvs")
    assert l4["note"] and "not forwarded" in l4["note"] and "IPVS" in l4["note"], l4
    assert "layer 4 services are not forwarded" in started.log()
    assert "not forwarded" in started.ctl("status").stdout
    print(f"\nno IPVS here: {l4['note']}")
    # the Layer 7 service beside it serves as ever
    for _ in range(3):
        s = connect_from(lab.hosts["client"], VIP, PORT)
        assert s.makefile("rb").readline().strip() == b"RS1"
        s.close()


def test_with_ipvs_the_kernel_table_follows_the_checks(lab, started):
    if not kernel_has_ipvs(lab):
        pytest.skip(NO_IPVS)
    status, l4 = l4_status(started)
    assert status.get("ipvs") is not None, "the kernel has IPVS, but lbcore shows no table"
    # the healthy server is in the table, the failed one removed
    rs1 = next(r for r in l4["real_servers"] if r["label"] == "RS1")
    rs2 = next(r for r in l4["real_servers"] if r["label"] == "RS2")
    assert rs1["ipvs"]["weight"] == 100 and "ipvs" not in rs2, l4


def test_layer4_address_stays_across_a_stop_and_the_layer7_one_goes(lab, lbcore, started):
    assert f"{L4_VIP}/32" in addresses(lab) and f"{VIP}/32" in addresses(lab)
    assert started.stop() == 0
    after = addresses(lab)
    assert f"{L4_VIP}/32" in after, f"the layer 4 address stays while lbcore is away:\n{after}"
    assert f"{VIP}/32" not in after, after
    # the next lbcore recognises the address as its own and removes it with the service
    lb = lbcore(config(lab, l4=False))
    assert f"{L4_VIP}/32" not in addresses(lab)
    assert lb.stop() == 0
