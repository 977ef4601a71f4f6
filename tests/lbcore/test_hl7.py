"""HL7 over MLLP through the Layer 7 service with real peers: python3-hl7's mllp_send
and MLLP server, long-lived interface connections carrying messages across reloads,
new weights deciding where new links go, and the reference guide's ping check with a
fallback server."""

import threading

from lab.lbcore import VIP
from lab.netns import connect_from
from lab.peers import mllp_server
from lab.programs import program
from lab.wait import wait_for

PORT = 2575
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def config(lab, servers, check='{ kind = "hl7", interval = "500ms", timeout = "1s", rise = 1, fall = 1 }', fallback=None, weight=100,
           weights=None):
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
weight = {(weights or {}).get(name, weight)}
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
        """Sends one message and waits for its ACK: (MSH-3, MSA-1, MSA-2) of the ACK."""
        self.sock.sendall(VT + message(control_id) + FS + CR)
        return self.receive()

    def receive(self):
        while FS + CR not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed while waiting for the ACK"
            self.buf += chunk
        frame, self.buf = self.buf.split(FS + CR, 1)
        text = frame.lstrip(VT).decode()
        segments = {s.split("|")[0]: s.split("|") for s in text.split("\r") if s}
        return segments["MSH"][2], segments["MSA"][1], segments["MSA"][2]


class MessagePump:
    """Sends message after message on a link from a thread of its own, each waiting for
    its ACK, which must come from IMS1 with AA and the message's control ID."""

    def __init__(self, link):
        self.link = link
        self.acked = 0
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                control_id = f"P{self.acked}"
                got = self.link.send(control_id)
                if got != ("IMS1", "AA", control_id):
                    self.error = f"message {control_id}: {got}"
                    return
                self.acked += 1
        except (OSError, AssertionError) as e:
            self.error = f"after {self.acked} ACKs: {e!r}"

    def finish(self):
        self.stop.set()
        self.thread.join(10)


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
    """Reloads while an interface engine's links carry messages: a link sending message
    after message through three reloads (a second server with new weights and another
    check kind, new weights again, a refused file) has every message ACKed by its
    server, and a message whose first half was sent before a reload and the rest after
    gets its ACK."""
    mllp_server(lab.hosts["rs1"], "IMS1", PORT)
    mllp_server(lab.hosts["rs2"], "IMS2", PORT)
    lb = lbcore(config(lab, ["rs1"]))
    lb.wait_health("HL7", "RS1", "up")
    busy, split = Link(lab), Link(lab)
    assert busy.send("A0") == ("IMS1", "AA", "A0") and split.send("S0") == ("IMS1", "AA", "S0")
    pump = MessagePump(busy)
    try:
        reloads = [
            (config(lab, ["rs1", "rs2"], check='{ kind = "tcp", interval = "500ms" }', weight=50), True),
            (config(lab, ["rs1", "rs2"], check='{ kind = "tcp", interval = "500ms" }', weight=80), True),
            ("[[service]]\nlabel = 'HL7'\n", False),
        ]
        for n, (text, valid) in enumerate(reloads):
            frame = VT + message(f"SPLIT{n}") + FS + CR
            split.sock.sendall(frame[:len(frame) // 2])
            before = pump.acked
            r = lb.reload(text)
            assert (r.returncode == 0) == valid, r.stderr
            if not valid:
                assert "missing field" in r.stderr, r.stderr
            split.sock.sendall(frame[len(frame) // 2:])
            assert split.receive() == ("IMS1", "AA", f"SPLIT{n}")
            wait_for(lambda: pump.acked > before + 10 or pump.error, 10, what=f"ACKs after reload {n + 1}")
            assert pump.error is None, pump.error
    finally:
        pump.finish()
    assert pump.error is None, pump.error
    print(f"\n{pump.acked} messages ACKed on one link through {len(reloads)} reloads")
    assert lb.server("HL7", "RS1")["connections"] == 2
    assert lb.server("HL7", "RS2")["connections"] == 0
    busy.sock.close()
    split.sock.close()


def test_reload_weights_decide_where_new_links_go(lab, lbcore):
    """wlc with weights 3:1 after a reload: with two links already open to IMS1, six new
    ones make it 6:2 (each new link goes where open links per weight are fewest)."""
    mllp_server(lab.hosts["rs1"], "IMS1", PORT)
    mllp_server(lab.hosts["rs2"], "IMS2", PORT)
    lb = lbcore(config(lab, ["rs1"]))
    lb.wait_health("HL7", "RS1", "up")
    old = [Link(lab), Link(lab)]
    assert [link.send(f"O{i}")[0] for i, link in enumerate(old)] == ["IMS1", "IMS1"]
    weights = {"rs1": 300, "rs2": 100}
    r = lb.reload(config(lab, ["rs1", "rs2"], weights=weights))
    assert r.returncode == 0, r.stderr
    lb.wait_health("HL7", "RS2", "up")
    new = [Link(lab) for _ in range(6)]
    names = [link.send(f"N{i}")[0] for i, link in enumerate(new)]
    total = len(old) + len(new)
    expected_ims1 = total * weights["rs1"] // sum(weights.values())
    assert names.count("IMS1") == expected_ims1 - len(old) and names.count("IMS2") == total - expected_ims1, names
    counts = {r: lb.server("HL7", r)["connections"] for r in ("RS1", "RS2")}
    assert counts == {"RS1": expected_ims1, "RS2": total - expected_ims1}, counts
    for link in old + new:
        link.sock.close()


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
