"""HL7 over MLLP through the Layer 7 service with real peers: python3-hl7's mllp_send
and MLLP server, a long-lived interface connection across a reload, and the reference
guide's ping check with a fallback server."""

from lab.lbcore import VIP
from lab.netns import connect_from
from lab.peers import mllp_server
from lab.programs import program

PORT = 2575
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def config(lab, servers, check='{ kind = "hl7", interval = "500ms", timeout = "1s", rise = 1, fall = 1 }', fallback=None, weight=100):
    text = f'''[[service]]
label = "HL7"
layer = 7
address = "{VIP}"
ports = [{PORT}]
check = {check}
'''
    if fallback:
        text += f'fallback = {{ address = "{lab.hosts[fallback].address}", port = {PORT} }}\n'
    for name in servers:
        text += f'''
[[service.real_server]]
label = "{name.upper()}"
address = "{lab.hosts[name].address}"
port = {PORT}
weight = {weight}
'''
    return text


def message(control_id):
    return (f"MSH|^~\\&|RIS|HOSP|PACS|HOSP|20261128120000||ADT^A01|{control_id}|P|2.5\r"
            f"PID|1||{control_id}^^^HOSP||DOE^JANE\r").encode()


class Link:
    """A long-lived MLLP connection, as an interface engine keeps one."""

    def __init__(self, lab):
        self.sock = connect_from(lab.hosts["client"], VIP, PORT)
        self.sock.settimeout(5)
        self.buf = b""

    def send(self, control_id):
        self.sock.sendall(VT + message(control_id) + FS + CR)
        while FS + CR not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed while waiting for the ACK"
            self.buf += chunk
        frame, self.buf = self.buf.split(FS + CR, 1)
        text = frame.lstrip(VT).decode()
        segments = {s.split("|")[0]: s.split("|") for s in text.split("\r") if s}
        return segments["MSH"][2], segments["MSA"][1], segments["MSA"][2]


def mllp_send(lab, control_id, tmp_path):
    path = tmp_path / f"{control_id}.hl7"
    path.write_bytes(message(control_id))
    r = lab.hosts["client"].run([program("mllp_send"), "--port", str(PORT), "--file", str(path), "--loose", VIP],
                                check=False, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_mllp_send_gets_its_ack_through_the_service(lab, lbcore, tmp_path):
    mllp_server(lab.hosts["rs1"], "IMS1", PORT)
    lb = lbcore(config(lab, ["rs1"]))
    lb.wait_health("HL7", "RS1", "up")
    out = mllp_send(lab, "MSG00001", tmp_path)
    assert "MSA|AA|MSG00001" in out.replace("\r", "\n"), out


def test_long_lived_link_survives_reloads(lab, lbcore):
    mllp_server(lab.hosts["rs1"], "IMS1", PORT)
    mllp_server(lab.hosts["rs2"], "IMS2", PORT)
    lb = lbcore(config(lab, ["rs1"]))
    lb.wait_health("HL7", "RS1", "up")
    link = Link(lab)
    for i in range(100):
        assert link.send(f"A{i}") == ("IMS1", "AA", f"A{i}")
    # Reload: a second server, new weights, another check kind. The link stays.
    r = lb.reload(config(lab, ["rs1", "rs2"], check='{ kind = "tcp", interval = "500ms" }', weight=50))
    assert r.returncode == 0, r.stderr
    for i in range(100):
        assert link.send(f"B{i}") == ("IMS1", "AA", f"B{i}")
    # An invalid reload is refused and the link does not notice either.
    r = lb.reload("[[service]]\nlabel = 'HL7'\n")
    assert r.returncode != 0 and "missing field" in r.stderr, r.stderr
    for i in range(10):
        assert link.send(f"C{i}") == ("IMS1", "AA", f"C{i}")
    assert lb.server("HL7", "RS1")["connections"] == 1


def test_ping_check_and_fallback_as_in_the_guide(lab, lbcore):
    mllp_server(lab.hosts["rs1"], "IMS1", PORT)
    mllp_server(lab.hosts["fb"], "FALLBACK", PORT)
    lb = lbcore(config(lab, ["rs1"], check='{ kind = "ping", interval = "500ms", timeout = "500ms", rise = 2, fall = 2 }', fallback="fb"))
    lb.wait_health("HL7", "RS1", "up")
    assert Link(lab).send("X1")[0] == "IMS1"
    rs1 = lab.hosts["rs1"]
    rs1.run([program("ip"), "link", "set", "eth0", "down"])
    try:
        lb.wait_health("HL7", "RS1", "down")
        assert "timed out" in lb.server("HL7", "RS1")["last_failure"]
        assert Link(lab).send("X2") == ("FALLBACK", "AA", "X2")
        assert lb.service("HL7")["fallback"]["in_use"]
    finally:
        rs1.run([program("ip"), "link", "set", "eth0", "up"])
    lb.wait_health("HL7", "RS1", "up")
    assert Link(lab).send("X3")[0] == "IMS1"
