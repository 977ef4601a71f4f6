"""Fixtures for lbcore's system tests: a lab of network namespaces (client, load
balancer, three real servers and a fallback server on one bridge) and a running lbcore
in the load balancer's namespace, driven through lbctl (lab.lbcore); lbweb in front of
it (lab.webapi.Lbweb: `lbweb`, which test_web.py calls `web`)."""

import pytest

from lab.lbcore import Lbcore
from lab.netns import Lab
from lab.webapi import Lbweb


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


@pytest.fixture
def lbcore(lab):
    started = []

    # with the firewall on, as the appliance runs lbcore: every system test of lbcore
    # also shows that the firewall lets its services work
    def start(config_text, extra_args=(), files=None, firewall=True):
        lb = Lbcore(lab, config_text, extra_args, files, firewall)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        if lb.process.poll() is None:
            lb.stop()
        lb.remove_firewall()


@pytest.fixture
def lbweb(lab):
    """lbweb(control, update_socket=None, init_socket=None, port=9443) starts lbweb
    (lab.webapi.Lbweb) in the `lb` host in front of lbcore's control socket `control` (a
    path, or an Lbcore), with an HTTPS client `api` in the `client` host; each one is
    stopped after the test."""
    started = []

    def start(control, **kw):
        w = Lbweb(lab, control, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.process.poll() is None:
            w.stop()


@pytest.fixture
def web(lbweb):
    """test_web.py's name of `lbweb`: web(lb) in front of the Lbcore `lb`."""
    return lbweb
