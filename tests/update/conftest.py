"""Fixtures of the software-update tests (tests/update): the update agent (`lbupdate
serve`, lab.update.Agent) on the host against a sparse copy of the built disk (each
test its own, copied from one taken at the start of the run), the good 0.2.0 made by
`lbupdate pack` as image/build makes one (the bad archives are test_refusals.py's),
lbweb in a lab of two network namespaces (`lb`, `client`) in front of the agent, and a
stand-in for init's control socket.

The benchmark lines of the tests are printed again at the end of the run."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from lab import update
from lab.netns import Lab
from lab.webapi import Lbweb


def pytest_terminal_summary(terminalreporter):
    if update.NOTES:
        terminalreporter.section("software update")
        for line in update.NOTES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def built():
    """What image/build made (run if something is missing)."""
    if os.geteuid() != 0:
        pytest.skip("the update tests run as root (network namespaces for lbweb, image/build)")
    update.ensure_built()
    return update.IMAGE_DIR


@pytest.fixture(scope="session")
def workdir(built):
    d = Path(tempfile.mkdtemp(prefix="update-tests-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pristine(workdir):
    """One copy of the built disk taken at the start of the run, which every test's own
    copy is made from (someone rebuilding the image meanwhile changes nothing here)."""
    return update.Disk(workdir / "pristine.raw")


@pytest.fixture(scope="session")
def release(workdir):
    """The good 0.2.0: (slot directory, archive, checksum file)."""
    slot = update.new_version("0.2.0", workdir / "slot-0.2.0")
    archive, checksum = update.pack(slot, "0.2.0", workdir / "release")
    return slot, archive, checksum


@pytest.fixture
def disk(tmp_path, pristine):
    """The test's own sparse copy of the built disk."""
    return update.Disk(tmp_path / "medlb.raw", source=pristine.path)


@pytest.fixture
def agents(tmp_path, built):
    """agents(disk, ...) starts an update agent on `disk` (lab.update.Agent's
    arguments); each one is stopped after the test."""
    started = []

    def start(disk, name="agent", **kw):
        a = update.Agent(tmp_path / name, disk, **kw).start()
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


@pytest.fixture
def fake_init(tmp_path):
    init = update.FakeInit(tmp_path / "init.sock")
    yield init
    init.close()


@pytest.fixture(scope="module")
def lab(built):
    lab = Lab("upd")
    try:
        lab.add_host("lb", 2)
        lab.add_host("client", 10)
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lbweb(lab, tmp_path):
    """lbweb(update_socket=..., init_socket=...) in the lab's `lb` host (no lbcore behind
    it); each one is stopped after the test."""
    started = []

    def start(**kw):
        w = Lbweb(lab, tmp_path / "no-lbcore.sock", **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.process.poll() is None:
            w.stop()
        lab.processes.remove(w.process)
