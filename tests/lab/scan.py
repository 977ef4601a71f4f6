"""Port scans from a test host, as a host of the hospital network sees a machine: a TCP
port is open (connected), closed (refused: a SYN got through and nothing listens) or
filtered (no answer); a UDP port is closed when an ICMP port unreachable comes back.
Used by the firewall tests (tests/lbcore/test_firewall.py, tests/image/test_layer4.py)."""

import socket
from concurrent.futures import ThreadPoolExecutor

from lab.netns import connect_from, socket_in


def tcp_state(host, address, port, timeout=0.4):
    try:
        connect_from(host, address, port, timeout=timeout).close()
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except (socket.timeout, TimeoutError):
        return "filtered"


def scan(host, addresses, ports, timeout=0.4):
    """{(address, port): "open" | "closed"} of every port that answered."""
    targets = [(a, p) for a in addresses for p in ports]
    with ThreadPoolExecutor(128) as pool:
        states = pool.map(lambda t: tcp_state(host, *t, timeout=timeout), targets)
    return {t: s for t, s in zip(targets, states) if s != "filtered"}


def udp_state(host, address, port, timeout=0.5):
    """"closed" when an ICMP port unreachable came back, "answered", or "no answer"."""
    s = socket_in(host)
    try:
        s.settimeout(timeout)
        s.connect((address, port))
        s.send(b"probe\n")
        s.recv(100)
        return "answered"
    except ConnectionRefusedError:
        return "closed"
    except (socket.timeout, TimeoutError):
        return "no answer"
    finally:
        s.close()
