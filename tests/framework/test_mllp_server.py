"""The one MLLP peer (tests/peers/mllp_server.py) in the modes its two users need: the
system tests' named server on a given port, and lbcore's HL7 health-check unit tests'
server on a port the kernel picks (printed), answering AA, AE, or with a wrong control
ID. Run with Debian's python3, as its users run it."""

import socket
import subprocess
from pathlib import Path

import pytest

from lab.programs import program

PEER = Path(__file__).resolve().parent.parent / "peers" / "mllp_server.py"
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
MESSAGE = "MSH|^~\\&|RIS|HOSP|ENGINE|CLINIC|20261128120000||ADT^A01|{id}|P|2.5\rPID|1||42^^^HOSP||DOE^JANE\r"


@pytest.fixture
def peer():
    started = []

    def start(*args):
        p = subprocess.Popen([program("python3"), str(PEER), "--host", "127.0.0.1", "--port", "0",
                              "--print-port", *args], stdout=subprocess.PIPE, text=True)
        started.append(p)
        return int(p.stdout.readline())

    yield start
    for p in started:
        p.kill()
        p.wait(timeout=10)


def exchange(port, control_id):
    """{segment: fields} of the ACK to one message with MSH-10 = `control_id`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(VT + MESSAGE.format(id=control_id).encode() + FS + CR)
        data = b""
        while FS + CR not in data:
            chunk = s.recv(65536)
            assert chunk, "closed before the ACK"
            data += chunk
    text = data.split(FS + CR)[0].lstrip(VT).decode()
    return {seg.split("|")[0]: seg.split("|") for seg in text.split("\r") if seg}


@pytest.mark.parametrize("mode, code", [("aa", "AA"), ("ae", "AE")])
def test_mode_sets_msa1_and_echoes_the_control_id(peer, mode, code):
    ack = exchange(peer("--mode", mode), "CTRL-1")
    assert ack["MSA"][1:3] == [code, "CTRL-1"]


def test_wrong_id_mode_answers_another_control_id(peer):
    ack = exchange(peer("--mode", "wrong-id"), "CTRL-2")
    assert ack["MSA"][1:3] == ["AA", "NOT-CTRL-2"]


def test_name_is_the_acks_sending_application(peer):
    ack = exchange(peer("--name", "IMS1"), "CTRL-3")
    assert ack["MSH"][2:4] == ["IMS1", "TEST"]
    assert ack["MSA"][1:3] == ["AA", "CTRL-3"]


def test_without_a_name_the_ack_comes_from_the_messages_receiver(peer):
    # python3-hl7's default: the ACK's sender is the message's MSH-5/MSH-6
    ack = exchange(peer(), "CTRL-4")
    assert ack["MSH"][2:4] == ["ENGINE", "CLINIC"]


def test_a_fixed_port_is_listened_on_and_printed(peer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert peer("--port", str(free)) == free
