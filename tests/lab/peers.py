"""The real peers the system tests start in a test host (a lab.netns.Host): the small
TCP server and the MLLP server of tests/peers/ (run by Debian's python3, which sees
python3-hl7), and dcmtk's storescp. Each returns once its peer listens; the lab stops
it at the end of the test. frozen() stops a running peer for a while (SIGSTOP): the
kernel still accepts TCP connections for it, but nothing answers on them."""

import contextlib
import os
import signal
from pathlib import Path

from lab.programs import program
from lab.wait import wait_listening

PEERS = Path(__file__).resolve().parent.parent / "peers"
PYTHON = program("python3")  # Debian's, which has python3-hl7


def tcp_peer(host, name, port, silent=False):
    args = [PYTHON, str(PEERS / "tcp_peer.py"), name, str(port)] + (["--silent"] if silent else [])
    p = host.spawn(args)
    wait_listening(host, port)
    return p


def mllp_server(host, name, port):
    p = host.spawn([PYTHON, str(PEERS / "mllp_server.py"), "--name", name, "--port", str(port)])
    wait_listening(host, port)
    return p


def storescp(host, port, outdir, *extra):
    Path(outdir).mkdir(parents=True, exist_ok=True)
    p = host.spawn([program("storescp"), "--aetitle", "LB-SCP", "+B", "-od", str(outdir), *extra, str(port)])
    wait_listening(host, port)
    return p


@contextlib.contextmanager
def frozen(process):
    """A peer that is up at the TCP level but dead above it, for the duration: its
    process group is stopped (SIGSTOP), so the kernel still completes handshakes into
    its listen backlog while the program never reads or answers; continued at the end."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)
