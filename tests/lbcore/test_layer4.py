"""Layer 4 services on a host: lbcore's part that does not need IPVS to forward.

IPVS itself is exercised inside the booted appliance (tests/image/test_layer4.py): the
kernel here may have no ip_vs module. Here: with or without IPVS, a Layer 4 service's
checks run and its status says what IPVS holds or why nothing is forwarded; stopping
lbcore (a restart) leaves the Layer 4 service address in place, since its flows run in
the kernel, while the Layer 7 one goes with the proxy.
"""

from lab.lbcore import VIP
from lab.peers import tcp_peer
from lab.programs import program

L4_VIP = "10.77.0.101"
PORT = 7400


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


def test_layer4_status_and_addresses_across_a_stop(lab, lbcore):
    tcp_peer(lab.hosts["rs1"], "RS1", PORT)
    lb = lbcore(config(lab))
    lb.wait_health("L4", "RS1", "up")
    lb.wait_health("L4", "RS2", "down")  # nothing listens there
    status = lb.status()
    l4 = next(s for s in status["services"] if s["label"] == "L4")
    assert l4["layer"] == 4 and l4["forwarding"] == "nat"
    if status.get("ipvs") is not None:
        # this kernel has IPVS (in the lb namespace): the healthy server is in it, the
        # failed one removed
        rs1 = next(r for r in l4["real_servers"] if r["label"] == "RS1")
        rs2 = next(r for r in l4["real_servers"] if r["label"] == "RS2")
        assert rs1["ipvs"]["weight"] == 100 and "ipvs" not in rs2, l4
    else:
        assert "not forwarded" in l4["note"] and "IPVS" in l4["note"], l4
        assert "layer 4 services are not forwarded" in lb.log()
        print(f"\nno IPVS here: {l4['note']}")
    text = lb.ctl("status").stdout
    assert "L4 (L4 nat)" in text, text
    assert f"{L4_VIP}/32" in addresses(lab) and f"{VIP}/32" in addresses(lab)
    assert lb.stop() == 0
    after = addresses(lab)
    assert f"{L4_VIP}/32" in after, f"the layer 4 address stays while lbcore is away:\n{after}"
    assert f"{VIP}/32" not in after, after
    # the next lbcore recognises the address as its own and removes it with the service
    lb = lbcore(config(lab, l4=False))
    assert f"{L4_VIP}/32" not in addresses(lab)
    assert lb.stop() == 0
