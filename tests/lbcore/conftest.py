"""Fixtures for lbcore's system tests: a lab of network namespaces (client, load
balancer, three real servers and a fallback server on one bridge) and a running lbcore
in the load balancer's namespace, driven through lbctl."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from netlab import Lab, wait_for  # noqa: E402

PEERS = TESTS / "peers"
BIN_DIR = Path(os.environ.get("LB_BIN_DIR", TESTS.parent / "target" / "release"))
VIP = "10.77.0.100"
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-hl7


def binary(name):
    path = BIN_DIR / name
    assert path.exists(), f"{path} is missing: build with cargo build --release"
    return str(path)


@pytest.fixture(scope="module")
def lab():
    lab = Lab("lbt")
    try:
        lab.add_host("lb", 2)
        lab.add_host("client", 10)
        lab.add_host("rs1", 11)
        lab.add_host("rs2", 12)
        lab.add_host("rs3", 13)
        lab.add_host("fb", 20)
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def stop_test_processes(lab):
    """Peers a test starts (storescp, MLLP servers, ...) end with the test."""
    before = len(lab.processes)
    yield
    started = lab.processes[before:]
    del lab.processes[before:]
    for p in reversed(started):
        lab.stop(p)


class Lbcore:
    """lbcore running in the lab's `lb` host, with its configuration in a temp dir."""

    def __init__(self, lab, config_text, extra_args=()):
        self.lab = lab
        self.host = lab.hosts["lb"]
        self.dir = Path(tempfile.mkdtemp(prefix="lbcore-test-"))
        self.config = self.dir / "lbcore.toml"
        self.socket = self.dir / "lbcore.sock"
        self.log_path = self.dir / "lbcore.log"
        if config_text is not None:
            self.config.write_text(config_text)
        self.log_file = open(self.log_path, "w")
        env = dict(os.environ, LBCORE_LOG="info")
        self.process = self.host.spawn(
            [binary("lbcore"), "--config", str(self.config), "--socket", str(self.socket), *extra_args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
        )
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None, 10, what="lbcore's control socket")
        if self.process.poll() is not None:
            raise AssertionError(f"lbcore exited with {self.process.returncode}:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def ctl(self, *args, check=True):
        r = self.host.run([binary("lbctl"), "--socket", str(self.socket), *args], check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"lbctl {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def service(self, label):
        return next(s for s in self.status()["services"] if s["label"] == label)

    def server(self, service, label):
        return next(r for r in self.service(service)["real_servers"] if r["label"] == label)

    def wait_health(self, service, server, health, timeout=15):
        wait_for(lambda: self.server(service, server)["health"] == health, timeout,
                 what=f"{service}/{server} to be {health}")

    def reload(self, config_text):
        self.config.write_text(config_text)
        return self.ctl("reload", check=False)

    def stop(self):
        self.lab.stop(self.process, signal.SIGTERM)
        self.log_file.close()
        return self.process.returncode


@pytest.fixture
def lbcore(lab):
    started = []

    def start(config_text, extra_args=()):
        lb = Lbcore(lab, config_text, extra_args)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        if lb.process.poll() is None:
            lb.stop()


def tcp_peer(host, name, port, silent=False):
    args = [PYTHON, str(PEERS / "tcp_peer.py"), name, str(port)] + (["--silent"] if silent else [])
    p = host.spawn(args)
    wait_listening(host, port)
    return p


def mllp_server(host, name, port):
    p = host.spawn([PYTHON, str(PEERS / "mllp_server.py"), name, str(port)])
    wait_listening(host, port)
    return p


def storescp(host, port, outdir, *extra):
    Path(outdir).mkdir(parents=True, exist_ok=True)
    p = host.spawn(["storescp", "--aetitle", "LB-SCP", "+B", "-od", str(outdir), *extra, str(port)])
    wait_listening(host, port)
    return p


def wait_listening(host, port, timeout=10):
    def listening():
        r = host.run(["ss", "-Htln", f"sport = :{port}"], check=False)
        return r.stdout.strip() != ""
    wait_for(listening, timeout, what=f"{host.name} to listen on {port}")
